//! The two front ends against each other: random resource sets and packet sequences through the pipeline
//! fed directly (the YAML path) and through Felix's driver protocol (the emulated Felix's messages over a
//! pipe into `felix-driver`'s front end, lowered, then the same pipeline). Every packet must get the same
//! verdict, egress, translation, tracking, Reject answer and logging.

use proptest::prelude::*;

use calxdp::parity::felix_level::FelixNode;
use calxdp::parity::pipeline_level::PipelineNode;
use calxdp::parity::Dataplane;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::Attach;
use calxdp_tests::gen::{case, cases, load};

fn attach(node: &calxdp_policy::node::NodeConfig, pkt: &PacketHeader) -> Attach {
    if let Some(w) = node.workloads.iter().find(|w| w.ips.contains(&pkt.src)) {
        return Attach::Workload(w.name.clone());
    }
    if node.is_host_ip(pkt.src) {
        return Attach::Host;
    }
    Attach::Uplink("eth0".into())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), .. ProptestConfig::default() })]

    #[test]
    fn felix_front_end_matches_the_yaml_front_end(c in case()) {
        let (node, rs) = match load(&c) {
            Ok(x) => x,
            Err(e) => { prop_assume!(false, "{}", e); unreachable!() }
        };
        let mut direct = PipelineNode::new(&node, &rs);
        let mut felix = FelixNode::new(&node, &rs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (i, pkt) in c.packets.iter().enumerate() {
            let at = attach(&node, pkt);
            let a = direct.process(&at, pkt, None).unwrap();
            let b = felix.process(&at, pkt, None).unwrap();
            prop_assert_eq!(a.verdict, b.verdict, "step {} {:?} {:?}\nyaml: {}\nfelix: {}\n{}", i, at, pkt, a.reason, b.reason, c.resources);
            prop_assert_eq!(&a.out, &b.out, "step {} {:?} {:?}", i, at, pkt);
            prop_assert_eq!(a.translated, b.translated, "step {} {:?} {:?}", i, at, pkt);
            prop_assert_eq!(a.tracked, b.tracked, "tracked, step {} {:?} {:?}", i, at, pkt);
            prop_assert_eq!(a.rejected, b.rejected, "rejected, step {} {:?} {:?}", i, at, pkt);
            prop_assert_eq!(a.logs.is_empty(), b.logs.is_empty(), "logged, step {} {:?} {:?}\n{}", i, at, pkt, c.resources);
        }
    }
}
