//! The pipeline against the reference evaluator: random resource sets and sequences of packets (with
//! replies, so conntrack and NAT carry state from packet to packet) through both; every packet must get
//! the same verdict, egress, translation, tracking and logs (within each Log rule's rate limit), a drop the same
//! reason and, with Felix's Reject deny action, the same answer.

use proptest::prelude::*;

use calxdp::parity::pipeline_level::PipelineNode;
use calxdp::parity::Dataplane;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::reference::{Attach, ReferenceNode};
use calxdp_policy::verdict::Verdict;
use calxdp_tests::gen::{case, cases, load};

/// Where a packet from `src` enters: its pod, the host, or the uplink.
fn attach(node: &calxdp_policy::node::NodeConfig, pkt: &PacketHeader) -> Attach {
    if let Some(w) = node.workloads.iter().find(|w| w.ips.contains(&pkt.src)) {
        return Attach::Workload(w.name.clone());
    }
    if node.is_host_ip(pkt.src) {
        return Attach::Host;
    }
    Attach::Uplink("eth0".into())
}

fn reply_to(p: &PacketHeader) -> PacketHeader {
    let mut r = *p;
    std::mem::swap(&mut r.src, &mut r.dst);
    std::mem::swap(&mut r.src_port, &mut r.dst_port);
    if p.protocol == calxdp_policy::resource::Protocol::TCP {
        r.tcp_flags = if p.tcp_flags & tcp_flags::SYN != 0 { tcp_flags::SYN | tcp_flags::ACK } else { tcp_flags::ACK };
    }
    match (r.protocol.0, r.icmp_type) {
        (1, 8) => r.icmp_type = 0,
        (58, 128) => r.icmp_type = 129,
        _ => {}
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1500), .. ProptestConfig::default() })]

    #[test]
    fn pipeline_matches_the_reference(c in case(), replies in proptest::collection::vec(any::<bool>(), 12)) {
        let (mut node, rs) = match load(&c) {
            Ok(x) => x,
            Err(e) => { prop_assume!(false, "{}", e); unreachable!() }
        };
        // A small conntrack table, so the sequences also fill it: early drop and refusal must agree too.
        node.felix.conntrack_capacity = 3 + c.packets.len() % 5;
        // Some cases answer drops as Felix's Reject does, some rate-limit each Log rule (burst 1, a minute
        // between tokens: the clock does not move here, so a rule logs once).
        if c.resources.len() % 2 == 1 {
            node.felix.iptables_filter_deny_action = calxdp_policy::node::DenyAction::Reject;
        }
        if c.resources.len() % 3 == 0 {
            node.felix.log_rate_limit = calxdp_policy::node::LogRate::parse("1/minute").ok();
            node.felix.log_rate_burst = 1;
        }
        let mut reference = ReferenceNode::new(node.clone(), rs.clone());
        let mut pipeline = PipelineNode::new(&node, &rs);
        let mut last: Option<PacketHeader> = None;
        for (i, pkt) in c.packets.iter().enumerate() {
            let pkt = match (replies[i], last) {
                (true, Some(prev)) => reply_to(&prev),
                _ => *pkt,
            };
            let at = attach(&node, &pkt);
            let a = reference.process(&at, &pkt, None).unwrap();
            let b = pipeline.process(&at, &pkt, None).unwrap();
            prop_assert_eq!(a.verdict, b.verdict, "step {} {:?} {:?}\nreference: {}\npipeline: {}\n{}", i, at, pkt, a.reason, b.reason, c.resources);
            prop_assert_eq!(&a.out, &b.out, "step {} {:?} {:?}", i, at, pkt);
            if a.verdict == Verdict::Allow {
                prop_assert_eq!(a.translated, b.translated, "step {} {:?} {:?}", i, at, pkt);
            } else {
                prop_assert_eq!(&a.reason, &b.reason, "step {} {:?} {:?}", i, at, pkt);
            }
            prop_assert_eq!(a.tracked, b.tracked, "tracked, step {} {:?} {:?}", i, at, pkt);
            prop_assert_eq!(&a.logs, &b.logs, "logs, step {} {:?} {:?}", i, at, pkt);
            prop_assert_eq!(a.rejected, b.rejected, "rejected, step {} {:?} {:?}\n{}", i, at, pkt, c.resources);
            last = Some(pkt);
        }
    }
}
