//! Drops by port through the production worker on memory ports: every dropped frame is counted on the port
//! it arrived on with its reason — by the pipeline (a policy's Deny), by the worker around it (a full
//! output queue), and for a frame held for its next hop when the port it was to leave by goes away — and
//! nowhere else; each reason's drops over the ports add up to the node-wide count.

use std::net::IpAddr;

use calxdp::offline::OfflineNode;
use calxdp_dataplane::decision::DropReason;
use calxdp_dataplane::port_drops::{IoDrop, DROP_KINDS};
use calxdp_dataplane::ports::PortId;
use calxdp_dataplane::wire::FrameSpec;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::resource::{load_text, Protocol, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, Origin};

const NODE: &str = "
name: node1
interfaces:
  - {name: eth0, ips: [10.0.0.1/24], gateway: 10.0.0.254, mac: '02:00:00:00:00:01', gatewayMac: '02:00:00:00:00:fe'}
namespaces:
  - {name: app, labels: {}}
workloads:
  - {name: a, namespace: app, interface: calia, ips: [192.168.1.1], mac: '0a:58:00:00:00:01', labels: {app: a}}
  - {name: b, namespace: app, interface: calib, ips: [192.168.1.2], mac: '0a:58:00:00:00:02', labels: {app: b}}
  - {name: c, namespace: app, interface: calic, ips: [192.168.1.3], labels: {app: c}}
";

const POLICY: &str = "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-ingress, namespace: app}
spec:
  selector: app == 'b'
  types: [Ingress]
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [80]}}
    - {action: Deny, protocol: TCP, destination: {ports: [8080]}}
";

fn node_config(text: &str) -> NodeConfig {
    let origin = Origin::file("node");
    let docs = parse_documents(text, &origin).unwrap();
    NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap_or_else(|e| panic!("{e}"))
}

fn node() -> OfflineNode {
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(POLICY, &Origin::file("policy")).unwrap().into_iter().map(|d| d.resource));
    OfflineNode::new(node_config(NODE), rs, false)
}

/// A TCP SYN from pod a (192.168.1.1) to `dst`:`port`, as a pod sends it to its gateway.
fn syn(dst: &str, port: u16, sport: u16) -> Vec<u8> {
    let h = PacketHeader {
        src: "192.168.1.1".parse::<IpAddr>().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::TCP,
        src_port: sport,
        dst_port: port,
        tcp_flags: tcp_flags::SYN,
        ..PacketHeader::EMPTY
    };
    let mut spec = FrameSpec::new(h);
    spec.src_mac = [0x0a, 0x58, 0, 0, 0, 1];
    spec.dst_mac = [0xee; 6];
    spec.build()
}

fn id(n: &OfflineNode, iface: &str) -> PortId {
    n.publisher.ports.get(iface).unwrap_or_else(|| panic!("no port id for {iface}"))
}

/// Every reason's drops over `ids` and the unattributed equal the node-wide count.
fn adds_up(n: &OfflineNode, ids: &[PortId]) {
    let drops = &n.worker.pipeline.port_drops;
    let io = &n.worker.io;
    let node_wide = |k: usize| -> u64 {
        match DropReason::ALL.get(k) {
            Some(r) => n.worker.pipeline.counters.dropped(*r),
            None => match IoDrop::ALL[k - DropReason::ALL.len()] {
                IoDrop::TxQueueFull => io.tx_full,
                IoDrop::Oversize => io.oversize,
                IoDrop::NoPort => io.no_port,
                IoDrop::NoNeighbour => io.no_neighbour,
                IoDrop::HandoffRingFull => io.handoff_full,
                IoDrop::ArpDropped => io.arp_dropped,
            },
        }
    };
    for k in 0..DROP_KINDS {
        let by_port: u64 = ids.iter().map(|i| drops.get(*i)[k]).sum::<u64>() + drops.unattributed[k];
        assert_eq!(by_port, node_wide(k), "{}", calxdp_dataplane::port_drops::kind_name(k));
    }
}

#[test]
fn each_drop_is_counted_on_the_port_the_frame_arrived_on() {
    let mut n = node();
    let (a, b, c) = (id(&n, "calia"), id(&n, "calib"), id(&n, "calic"));
    let all: Vec<PortId> = n.port_ids();

    // The policy's Deny: two SYNs from a to b:8080.
    n.inject(a, syn("192.168.1.2", 8080, 40000)).unwrap();
    n.inject(a, syn("192.168.1.2", 8080, 40001)).unwrap();
    n.settle();
    let deny = DropReason::PolicyDeny as usize;
    assert_eq!(n.worker.pipeline.port_drops.get(a)[deny], 2);
    for other in all.iter().filter(|i| **i != a) {
        assert_eq!(n.worker.pipeline.port_drops.get(*other)[deny], 0, "port {other}");
    }

    // Allowed to b:80, but b's queue takes nothing: the loss counts on a, where the frame came in.
    n.worker.memory_port(b).unwrap().tx_limit = 0;
    n.inject(a, syn("192.168.1.2", 80, 40002)).unwrap();
    n.settle();
    assert_eq!(n.worker.pipeline.port_drops.get(a)[IoDrop::TxQueueFull.index()], 1);
    assert_eq!(n.worker.pipeline.port_drops.get(b)[IoDrop::TxQueueFull.index()], 0);

    // To c, whose MAC is not known yet: held while it is asked for; c goes away meanwhile, and the held
    // frame is dropped on a's account, not c's.
    n.inject(a, syn("192.168.1.3", 80, 40003)).unwrap();
    n.worker.round();
    assert!(n.worker.has_held_frames(), "the frame waits for c's MAC");
    let without_c = NODE.lines().filter(|l| !l.contains("name: c,")).collect::<Vec<_>>().join("\n");
    n.set_node(node_config(&without_c)).unwrap();
    assert!(!n.worker.has_held_frames());
    assert_eq!(n.worker.pipeline.port_drops.get(a)[IoDrop::NoNeighbour.index()], 1);
    assert_eq!(n.worker.pipeline.port_drops.get(c)[IoDrop::NoNeighbour.index()], 0);

    adds_up(&n, &all);
}
