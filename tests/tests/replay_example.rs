//! The README's main command: the shipped capture replayed against the shipped node and policies.

use std::path::PathBuf;

use calxdp::replay::{load_node, replay};

#[test]
fn the_example_capture_replays_with_the_expected_verdicts() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let node = load_node(&root.join("examples/node.yaml")).unwrap();
    let r = replay(node, &root.join("examples/policies"), &root.join("examples/capture.pcap")).unwrap();
    print!("{}", r.report);
    assert_eq!((r.allowed, r.dropped), (8, 4), "{}", r.report);
    let lines: Vec<&str> = r.report.lines().collect();
    let row = |n: usize| lines[n];
    assert!(row(3).contains("allow") && row(3).contains("192.168.1.10:8080"), "ClusterIP translated: {}", row(3));
    assert!(
        row(6).contains("drop") && row(6).contains("WorkloadEndpoint/shop/web"),
        "preDNAT allow does not skip pod policy: {}",
        row(6)
    );
    assert!(row(7).contains("failsafe"), "{}", row(7));
    assert!(row(11).contains("conntrack: invalid"), "{}", row(11));
    assert!(row(12).contains("malformed frame"), "{}", row(12));
    assert_eq!(r.out.get("web").map(Vec::len), Some(2));
    assert!(
        r.report.contains(
            "2  normal ingress rule 0 (Allow) of tier default policy KubernetesNetworkPolicy/shop/web-from-frontend"
        ),
        "rule hits: {}",
        r.report
    );
    assert!(
        r.report.contains("   8  calico-packet: IN=eth0 OUT= MAC="),
        "the denied host access is logged: {}",
        r.report
    );
}
