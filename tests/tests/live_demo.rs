//! `calxdp demo` end to end: the namespaces, the sample policies and real traffic; every flow must behave
//! as Linux Calico would, with one worker and with two, and the demo must leave nothing behind. One test,
//! because the demo's namespaces have fixed names.

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn the_demo_flows_behave_as_calico_with_one_and_two_workers_and_nothing_is_left_behind() {
    if let Some(why) = calxdp::parity::live_level::unavailable() {
        panic!("cannot run: {why}");
    }
    for tool in ["ethtool", "ping"] {
        if std::process::Command::new(tool).arg("-V").output().is_err() {
            panic!("the demo needs {tool} (apt-get install ethtool iputils-ping)");
        }
    }
    assert_eq!(calxdp::demo::demo(1, false).map_err(|e| e.to_string()), Ok(true));
    // Two workers: a flow's two directions arrive on different queues, and each frame must still be
    // decided by the worker whose conntrack holds the flow (the service's DNAT included).
    assert_eq!(calxdp::demo::demo(2, false).map_err(|e| e.to_string()), Ok(true));
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("cxdemo-"), "namespaces left behind: {left}");
}
