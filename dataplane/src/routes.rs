//! The node's routes, compiled once per table version into what a lookup needs and nothing else: every
//! exact address the node owns (its own, its pods') in one open-addressing table per address family, then
//! the uplinks' subnets in order, then each family's default uplink. Routing an established packet was a
//! scan of the host's addresses, a general-purpose hash of an `IpAddr` enum, and a walk of the uplinks'
//! subnet lists through the node config, a tenth of the established path's instructions.
//!
//! The order of the answers is the order `PortMap` documents (and the reference's `route`): a host address
//! (or loopback) is local, then a local pod's address, then the first uplink whose subnet holds the
//! destination, then the first uplink with a gateway of its family, then the first uplink.

use std::net::IpAddr;

use calxdp_policy::node::NodeConfig;

use crate::path::Route;

/// Routes of one table version.
#[derive(Debug, Default)]
pub struct RouteTable {
    v4: ExactTable<u32>,
    v6: ExactTable<u128>,
    /// Uplink subnets in node order: (network bits, mask bits, uplink), IPv4 in the low 32 bits.
    subnets_v4: Vec<(u128, u128, u16)>,
    subnets_v6: Vec<(u128, u128, u16)>,
    default_v4: Option<u16>,
    default_v6: Option<u16>,
}

impl RouteTable {
    pub fn new(node: &NodeConfig) -> RouteTable {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut add = |ip: IpAddr, r: Route| match ip {
            IpAddr::V4(a) => v4.push((u32::from(a), r)),
            IpAddr::V6(a) => v6.push((u128::from(a), r)),
        };
        // Host addresses first, then pods in node order: the first entry of an address is kept, so a host
        // address is never a pod's, and of two pods that claim one address the first has it (as the
        // reference's `NodeConfig::local_workload_by_ip` finds it).
        for u in &node.uplinks {
            for ip in &u.addrs {
                add(*ip, Route::Local);
            }
        }
        for (w, pod) in node.workloads.iter().enumerate() {
            for ip in &pod.ips {
                add(*ip, Route::Workload(w as u16));
            }
        }
        let mut subnets_v4 = Vec::new();
        let mut subnets_v6 = Vec::new();
        for (i, u) in node.uplinks.iter().enumerate() {
            for n in &u.ips {
                let (list, width) = if n.addr().is_ipv4() { (&mut subnets_v4, 32) } else { (&mut subnets_v6, 128) };
                let len = u32::from(n.prefix_len()).min(width);
                let mask = if len == 0 { 0 } else { (u128::MAX >> (128 - width)) & !((1u128 << (width - len)) - 1) };
                list.push((n.bits() & mask, mask, i as u16));
            }
        }
        let default = |v4: bool| {
            let probe: IpAddr = if v4 { [0u8; 4].into() } else { [0u16; 8].into() };
            node.uplinks
                .iter()
                .position(|u| u.gateway(probe).is_some())
                .or(if node.uplinks.is_empty() { None } else { Some(0) })
                .map(|u| u as u16)
        };
        RouteTable {
            v4: ExactTable::new(v4),
            v6: ExactTable::new(v6),
            subnets_v4,
            subnets_v6,
            default_v4: default(true),
            default_v6: default(false),
        }
    }

    /// Where routing sends a packet to `dst`.
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Route {
        let (exact, bits, subnets, default) = match dst {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                // 127.0.0.0/8.
                if bits >> 24 == 127 {
                    return Route::Local;
                }
                (self.v4.get(bits), u128::from(bits), &self.subnets_v4, self.default_v4)
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                if bits == 1 {
                    return Route::Local;
                }
                (self.v6.get(bits), bits, &self.subnets_v6, self.default_v6)
            }
        };
        if let Some(r) = exact {
            return r;
        }
        match subnets.iter().find(|(net, mask, _)| bits & mask == *net) {
            Some((_, _, u)) => Route::Uplink(*u),
            None => default.map_or(Route::Local, Route::Uplink),
        }
    }

    /// The local pod that owns `ip` (a host address is no pod's, even if a pod claims it too).
    #[inline]
    pub fn workload(&self, ip: IpAddr) -> Option<u16> {
        let exact = match ip {
            IpAddr::V4(a) => self.v4.get(u32::from(a)),
            IpAddr::V6(a) => self.v6.get(u128::from(a)),
        };
        match exact {
            Some(Route::Workload(w)) => Some(w),
            _ => None,
        }
    }
}

/// A key of an [`ExactTable`]: an address as an integer.
trait AddrKey: Copy + Eq + Default {
    fn slot_hash(self) -> u64;
}

impl AddrKey for u32 {
    fn slot_hash(self) -> u64 {
        u64::from(self).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

impl AddrKey for u128 {
    fn slot_hash(self) -> u64 {
        ((self as u64) ^ (self >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Exact addresses and their routes: linear probing in a power-of-two table at most half full, built once
/// and only read. The top bits of a multiplicative hash pick the slot (pod addresses are often consecutive:
/// the product's high bits spread them).
#[derive(Debug, Default)]
struct ExactTable<K> {
    slots: Vec<Option<(K, Route)>>,
    shift: u32,
}

impl<K: AddrKey> ExactTable<K> {
    /// The table of `entries`; of two entries with one key, the first is kept.
    fn new(entries: Vec<(K, Route)>) -> ExactTable<K> {
        let size = (entries.len() * 2).next_power_of_two().max(2);
        let mut t = ExactTable { slots: vec![None; size], shift: 64 - size.trailing_zeros() };
        for (k, r) in entries {
            let mut i = t.first(k);
            loop {
                match &mut t.slots[i] {
                    Some((key, _)) if *key == k => break,
                    Some(_) => i = (i + 1) & (size - 1),
                    empty @ None => {
                        *empty = Some((k, r));
                        break;
                    }
                }
            }
        }
        t
    }

    #[inline]
    fn first(&self, k: K) -> usize {
        (k.slot_hash() >> self.shift) as usize
    }

    #[inline]
    fn get(&self, k: K) -> Option<Route> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.first(k);
        loop {
            match self.slots[i] {
                None => return None,
                Some((key, r)) if key == k => return Some(r),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeConfig {
        use calxdp_policy::yaml::{parse_documents, Field, Origin};
        let mut text = String::from(
            "name: n\ninterfaces:\n  - {name: eth0, ips: [10.0.0.1/24, fd00::1/64]}\n  \
             - {name: eth1, ips: [192.168.1.1/16], gateway: [192.168.0.254, fd01::fe]}\nworkloads:\n",
        );
        for i in 0..300u32 {
            text += &format!(
                "  - {{name: pod{i}, interface: cali{i}, ips: [10.65.{}.{}, fd10::{i:x}]}}\n",
                i >> 8,
                i & 255
            );
        }
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(&text, &origin).unwrap();
        NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
    }

    #[test]
    fn compiled_routes_answer_as_the_node_config_does() {
        let n = node();
        let t = RouteTable::new(&n);
        // The answer the uncompiled rules give, written out as PortMap's documentation says.
        let expected = |dst: IpAddr| {
            if dst.is_loopback() || n.uplinks.iter().any(|u| u.addrs.contains(&dst)) {
                Route::Local
            } else if let Some(w) = n.workloads.iter().position(|w| w.ips.contains(&dst)) {
                Route::Workload(w as u16)
            } else {
                n.uplink_for(dst).map_or(Route::Local, |u| Route::Uplink(u as u16))
            }
        };
        let mut dsts: Vec<IpAddr> = [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "10.0.0.1",
            "10.0.0.7",
            "fd00::1",
            "fd00::9",
            "192.168.7.7",
            "192.169.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "10.65.1.44",
            "10.65.2.0",
            "fd10::12b",
            "fd10::12c",
            "::ffff:10.0.0.1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        dsts.extend(n.workloads.iter().flat_map(|w| w.ips.iter().copied()));
        for dst in dsts {
            assert_eq!(t.route(dst), expected(dst), "{dst}");
            let pod = match expected(dst) {
                Route::Workload(w) => Some(w),
                _ => None,
            };
            assert_eq!(t.workload(dst), pod, "{dst}");
        }
        // eth1 has the gateways: off-subnet traffic of both families leaves by it.
        assert_eq!(t.route("8.8.8.8".parse().unwrap()), Route::Uplink(1));
        assert_eq!(t.route("2001:db8::1".parse().unwrap()), Route::Uplink(1));
    }

    #[test]
    fn of_two_pods_claiming_one_address_the_first_in_node_order_has_it() {
        let mut n = node();
        let shared: IpAddr = "10.65.0.7".parse().unwrap();
        n.workloads[200].ips.push(shared);
        n.workloads[9].ips.push(shared);
        let t = RouteTable::new(&n);
        assert_eq!(t.route(shared), Route::Workload(7));
        assert_eq!(t.workload(shared), n.local_workload_by_ip(shared).map(|w| w as u16));
    }

    #[test]
    fn a_host_address_a_pod_also_claims_is_the_hosts() {
        let mut n = node();
        n.workloads[3].ips.push("10.0.0.1".parse().unwrap());
        let t = RouteTable::new(&n);
        assert_eq!(t.route("10.0.0.1".parse().unwrap()), Route::Local);
        assert_eq!(t.workload("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn a_node_without_uplinks_or_pods_routes_everything_locally() {
        let mut n = node();
        n.uplinks.clear();
        n.workloads.clear();
        let t = RouteTable::new(&n);
        assert_eq!(t.route("8.8.8.8".parse().unwrap()), Route::Local);
        assert_eq!(t.workload("8.8.8.8".parse().unwrap()), None);
    }
}
