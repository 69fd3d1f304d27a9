//! The compiled classifier against the reference evaluator: on random resource sets, every walk of every
//! local endpoint must end the same way, on the same rule, with the same logs.

use proptest::prelude::*;

use calxdp_policy::compile::walker::Compiled;
use calxdp_policy::reference::{EndpointRef, Interpreted, PolicyWalker};
use calxdp_policy::resolve::{Direction, Stage};
use calxdp_tests::gen::{case, cases, resolve};

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), .. ProptestConfig::default() })]

    #[test]
    fn compiled_walks_match_the_reference(c in case()) {
        let world = match resolve(&c) {
            Ok(w) => w,
            // A generated combination validation rejects (e.g. ports on a rule that lost its protocol) proves nothing.
            Err(e) => { if std::env::var_os("CALXDP_SHOW_REJECTS").is_some() { eprintln!("REJECT {e}"); } prop_assume!(false, "{}", e); unreachable!() }
        };
        let mut compiled = Compiled::default();
        compiled.rebuild(&world).unwrap();
        let mut endpoints: Vec<(EndpointRef, &[Stage])> = (0..world.workloads.len()).map(|i| (EndpointRef::Workload(i), &[Stage::Normal][..])).collect();
        for h in 0..world.host_endpoints.len() {
            endpoints.push((EndpointRef::Host(h), &[Stage::Untracked, Stage::PreDnat, Stage::Normal, Stage::Forward][..]));
        }
        for (ep, stages) in endpoints {
            for &stage in stages {
                for d in [Direction::Ingress, Direction::Egress] {
                    prop_assert_eq!(
                        Interpreted.has_policies(&world, ep, stage, Some(d)),
                        compiled.has_policies(&world, ep, stage, Some(d)),
                        "has_policies {:?} {:?} {:?}", ep, stage, d
                    );
                    for pkt in &c.packets {
                        let (mut la, mut lb) = (Vec::new(), Vec::new());
                        let a = Interpreted.walk(&world, ep, d, stage, pkt, &mut la);
                        let b = compiled.walk(&world, ep, d, stage, pkt, &mut lb);
                        prop_assert_eq!(&a, &b, "{:?} {:?} {:?} {:?}\n{}", ep, stage, d, pkt, c.resources);
                        prop_assert_eq!(&la, &lb, "logs {:?} {:?} {:?} {:?}", ep, stage, d, pkt);
                    }
                }
            }
        }
    }
}
