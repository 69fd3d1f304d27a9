//! The kernel's ICMP error rate limits for the answers of Felix's Reject deny action
//! (`calxdp_policy::reject`): the host's global bucket and one bucket per destination, per worker. The
//! kernel's per-destination buckets live in its inet_peer cache; here a fixed table indexed by the
//! address's hash, where a newcomer takes its slot with a full bucket (a peer the kernel forgot is full
//! again too). Allocated once; nothing on the path allocates.

use std::net::IpAddr;

use calxdp_policy::node::NodeConfig;
use calxdp_policy::reject::{peer_rate, GLOBAL};

use crate::flow::Nanos;

const PEER_SLOTS: usize = 256;

#[derive(Debug)]
pub struct IcmpErrorLimits {
    global: u64,
    peers: Box<[(IpAddr, u64)]>,
}

impl Default for IcmpErrorLimits {
    fn default() -> IcmpErrorLimits {
        let unset = (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
        IcmpErrorLimits { global: 0, peers: vec![unset; PEER_SLOTS].into_boxed_slice() }
    }
}

impl IcmpErrorLimits {
    /// Whether an ICMP error to `dst` may be sent at `now` (per destination first, then the global bucket,
    /// as current kernels order them); takes the tokens if so.
    pub fn admit(&mut self, node: &NodeConfig, dst: IpAddr, now: Nanos) -> bool {
        if !GLOBAL.would_admit(self.global, now) {
            return false;
        }
        if let Some(rate) = peer_rate(node, dst) {
            let slot = &mut self.peers[slot_of(dst)];
            if slot.0 != dst {
                *slot = (dst, 0);
            }
            match rate.admit(slot.1, now) {
                Some(next) => slot.1 = next,
                None => return false,
            }
        }
        if let Some(next) = GLOBAL.admit(self.global, now) {
            self.global = next;
        }
        true
    }
}

fn slot_of(ip: IpAddr) -> usize {
    let bits = calxdp_policy::net::addr_bits(ip);
    let h = (bits as u64 ^ (bits >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 56) as usize % PEER_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_answers_to_one_sender_then_one_a_second_and_other_senders_unaffected() {
        let node = NodeConfig {
            name: "n".into(),
            uplinks: Vec::new(),
            namespaces: Vec::new(),
            workloads: Vec::new(),
            remote_endpoints: Vec::new(),
            services: Vec::new(),
            felix: Default::default(),
        };
        let mut l = IcmpErrorLimits::default();
        let a: IpAddr = "10.0.0.99".parse().unwrap();
        let b: IpAddr = "10.0.0.98".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.admit(&node, a, 0)).count(), 6);
        assert!(l.admit(&node, b, 0));
        assert!(!l.admit(&node, a, 999_999_999));
        assert!(l.admit(&node, a, 1_000_000_000));
    }
}
