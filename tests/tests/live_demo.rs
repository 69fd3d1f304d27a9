//! `calxdp demo` end to end: the namespaces, the sample policies and real traffic; every flow must behave
//! as Linux Calico would, and the demo must leave nothing behind.

#[test]
fn the_demo_flows_behave_as_calico_and_nothing_is_left_behind() {
    if let Some(why) = calxdp::parity::live_level::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    for tool in ["ethtool", "ping"] {
        if std::process::Command::new(tool).arg("-V").output().is_err() {
            eprintln!("skipped: the demo needs {tool} (apt-get install ethtool iputils-ping)");
            return;
        }
    }
    assert_eq!(calxdp::demo::demo(), Ok(true));
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("cxdemo-"), "namespaces left behind: {left}");
}
