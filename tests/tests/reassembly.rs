//! Fragmented datagrams through the production worker on memory ports (the pipeline level): reassembled
//! before conntrack as Linux's defrag does, decided once by policy and conntrack with the first fragment's
//! ports, and sent on as the fragments they arrived as (the datagram's headers, rewritten: TTL, MACs, NAT
//! with the whole datagram's checksum); every fragment dropped is counted with its reason.

use std::net::IpAddr;
use std::time::Duration;

use calxdp::offline::OfflineNode;
use calxdp_dataplane::decision::DropReason;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::reassembly::{Insert, Reassembly};
use calxdp_dataplane::wire::fragment::{cut, fragment_of};
use calxdp_dataplane::wire::{parse, FrameSpec};
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resource::load_text;
use calxdp_policy::resource::{Protocol, ResourceSet};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::{parse_documents, Field, Origin};

const NODE: &str = "
name: node1
interfaces:
  - {name: eth0, ips: [10.0.0.1/24, 'fd00::1/64'], gateway: 10.0.0.254, mac: '02:00:00:00:00:01', gatewayMac: '02:00:00:00:00:fe'}
namespaces:
  - {name: app, labels: {}}
workloads:
  - {name: dns, namespace: app, interface: caliD, ips: [192.168.1.10, 'fd00:1::10'], mac: '0a:58:00:00:00:05', labels: {app: dns}}
services:
  - {name: dns, namespace: app, protocol: UDP, clusterIP: 10.96.0.10, port: 53, backends: ['192.168.1.10:5353']}
";

const POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: app}
spec:
  podSelector: {matchLabels: {app: dns}}
  policyTypes: [Ingress]
  ingress:
    - ports: [{protocol: UDP, port: 53}, {protocol: UDP, port: 5353}]
";

fn node() -> OfflineNode {
    let origin = Origin::file("node");
    let docs = parse_documents(NODE, &origin).unwrap();
    let node = calxdp_policy::node::NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap_or_else(|e| panic!("{e}"));
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(POLICY, &Origin::file("policy")).unwrap().into_iter().map(|d| d.resource));
    OfflineNode::new(node, rs, false)
}

/// A whole UDP datagram of `payload` bytes from an outside client to `dst`:`port`.
fn datagram(dst: &str, port: u16, payload: usize) -> Vec<u8> {
    let dst: IpAddr = dst.parse().unwrap();
    let src: IpAddr = if dst.is_ipv4() { "203.0.113.5".parse().unwrap() } else { "fd00::99".parse().unwrap() };
    let h = PacketHeader { src, dst, protocol: Protocol::UDP, src_port: 40000, dst_port: port, ..PacketHeader::EMPTY };
    let mut spec = FrameSpec { payload_len: payload, ..FrameSpec::new(h) };
    spec.dst_mac = [2, 0, 0, 0, 0, 1];
    let mut f = spec.build();
    let p = parse(&f).unwrap();
    for (i, b) in f[p.l4_offset + 8..p.l3_end].iter_mut().enumerate() {
        *b = (i * 7 % 256) as u8;
    }
    calxdp_dataplane::wire::checksum::fill_l4_checksum(src, dst, Protocol::UDP, &mut f[p.l4_offset..p.l3_end]);
    if dst.is_ipv4() {
        // A sender that fragments clears don't-fragment.
        f[20..22].copy_from_slice(&[0, 0]);
        f[24..26].copy_from_slice(&[0, 0]);
        let c = calxdp_dataplane::wire::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    f
}

/// Puts fragments back together (as the receiving host does), checking each is a fragment.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut r = Reassembly::new();
    for f in frags {
        let v = fragment_of(f).expect("a fragment");
        if let Insert::Complete(s) = r.insert(&v, f, 0) {
            return r.datagram(s).to_vec();
        }
    }
    panic!("the fragments do not complete a datagram");
}

#[test]
fn an_allowed_fragmented_datagram_is_reassembled_decided_once_and_sent_as_its_fragments() {
    for (dst, size) in [("192.168.1.10", 1480), ("fd00:1::10", 1232)] {
        let mut n = node();
        let up = n.id_of(Port::Uplink(0));
        let pod = n.id_of(Port::Workload(0));
        let whole = datagram(dst, 53, 3000);
        let frags = cut(&whole, size, 0x1234).unwrap();
        assert_eq!(frags.len(), 3);
        for f in &frags {
            n.inject(up, f.clone()).unwrap();
        }
        let trace = n.settle();
        assert_eq!(trace.len(), 1, "one decision for the datagram: {trace:?}");
        assert_eq!((trace[0].verdict, trace[0].out), (Verdict::Allow, Some(Port::Workload(0))), "{dst}");
        assert_eq!(trace[0].header.dst_port, 53, "ports from the first fragment");
        let sent = n.take_sent(pod);
        assert_eq!(sent.len(), 3, "{dst}: the three fragments");
        for (out, arrived) in sent.iter().zip(&frags) {
            assert_eq!(out.len(), arrived.len(), "the geometry it arrived in");
            assert_eq!(&out[0..6], &[0x0a, 0x58, 0, 0, 0, 5], "to the pod's MAC");
        }
        let back = reassemble(&sent);
        let p = parse(&back).unwrap();
        assert!(p.verify_l4_checksum(&back), "the whole datagram's checksum");
        let original = parse(&whole).unwrap();
        assert_eq!(back[p.l4_offset..p.l3_end], whole[original.l4_offset..original.l3_end], "the payload");
        let ttl_at = if p.l3 == calxdp_dataplane::wire::L3::Ipv4 { 14 + 8 } else { 14 + 7 };
        assert_eq!(back[ttl_at], whole[ttl_at] - 1, "forwarded: TTL decremented");
        let c = n.worker.pipeline.counters;
        assert_eq!((c.fragments, c.reassembled, c.packets, c.allowed), (3, 1, 1, 1));

        // The same datagram to a port policy denies: one decision, dropped, nothing sent.
        for f in cut(&datagram(dst, 54, 3000), size, 0x1235).unwrap() {
            n.inject(up, f).unwrap();
        }
        let trace = n.settle();
        assert_eq!(trace.len(), 1);
        assert_eq!(trace[0].verdict, Verdict::Drop);
        assert!(n.take_sent(pod).is_empty());
        let c = n.worker.pipeline.counters;
        let by_policy = c.dropped(DropReason::PolicyDeny) + c.dropped(DropReason::EndOfTier);
        assert_eq!((by_policy, c.drops.iter().sum::<u64>()), (1, 1), "{:?}", trace[0].decision);
    }
}

/// A fragmented datagram to a ClusterIP: DNAT rewrites the address in every fragment and the port and the
/// checksum in the first; the receiver puts together a datagram whose checksum holds.
#[test]
fn service_nat_of_a_fragmented_datagram_keeps_its_checksum_whole() {
    let mut n = node();
    let up = n.id_of(Port::Uplink(0));
    let pod = n.id_of(Port::Workload(0));
    let mut whole = datagram("10.96.0.10", 53, 2500);
    whole[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    for f in cut(&whole, 1480, 77).unwrap() {
        n.inject(up, f).unwrap();
    }
    let trace = n.settle();
    assert_eq!(trace.len(), 1);
    assert_eq!(trace[0].verdict, Verdict::Allow, "{trace:?}");
    let sent = n.take_sent(pod);
    assert_eq!(sent.len(), 2);
    let back = reassemble(&sent);
    let p = parse(&back).unwrap();
    assert_eq!((p.header.dst, p.header.dst_port), ("192.168.1.10".parse().unwrap(), 5353));
    assert!(p.verify_l4_checksum(&back), "the checksum over the translated datagram");
    assert!(calxdp_dataplane::frames::ipv4_header_ok(&back, &p));
}

#[test]
fn overlaps_duplicates_and_timeouts_are_counted_and_leave_nothing_behind() {
    let mut n = node();
    let up = n.id_of(Port::Uplink(0));
    let pod = n.id_of(Port::Workload(0));
    // IPv6: the first fragment, then one that overlaps it: the whole datagram is discarded (RFC 5722).
    let whole = datagram("fd00:1::10", 53, 3000);
    let frags = cut(&whole, 1232, 9).unwrap();
    let overlapping = cut(&whole, 1224, 9).unwrap();
    n.inject(up, frags[0].clone()).unwrap();
    n.inject(up, frags[0].clone()).unwrap();
    n.inject(up, overlapping[1].clone()).unwrap();
    // The rest of the datagram comes, but what it would complete is gone.
    n.inject(up, frags[1].clone()).unwrap();
    n.inject(up, frags[2].clone()).unwrap();
    assert!(n.settle().is_empty());
    assert!(n.take_sent(pod).is_empty());
    let c = n.worker.pipeline.counters;
    assert_eq!(c.dropped(DropReason::FragmentDuplicate), 1);
    assert_eq!(c.dropped(DropReason::FragmentOverlap), 2, "the held first fragment and the overlapping one");
    // Two fragments of a new datagram (the last two) wait; after 60 s they are dropped as timed out.
    assert_eq!(n.worker.pipeline.reassembly.in_progress(), 1);
    n.clock.advance(Duration::from_secs(61));
    for _ in 0..16 {
        n.worker.round();
    }
    assert_eq!(n.worker.pipeline.reassembly.in_progress(), 0);
    assert_eq!(n.worker.pipeline.counters.dropped(DropReason::ReassemblyTimeout), 2);
    assert_eq!(n.worker.pipeline.reassembly.charged(), [0, 0]);
    // IPv4 times out after 30 s.
    let frags = cut(&datagram("192.168.1.10", 53, 3000), 1480, 10).unwrap();
    n.inject(up, frags[0].clone()).unwrap();
    n.settle();
    n.clock.advance(Duration::from_secs(31));
    for _ in 0..16 {
        n.worker.round();
    }
    assert_eq!(n.worker.pipeline.counters.dropped(DropReason::ReassemblyTimeout), 3);
    let c = n.worker.pipeline.counters;
    let drops: u64 = c.drops.iter().sum();
    assert_eq!(c.packets, c.allowed + drops, "every fragment is a packet allowed (in its datagram) or dropped");
}
