//! The worker's batch code against itself one frame at a time: random resource sets and frame sequences
//! (replies, repeated packets of a flow, a small conntrack table that fills), delivered to the production
//! worker on memory ports once frame by frame and once as batches of up to 64 frames per port; every frame
//! must be decided the same (verdict, reason, output port, translation, conntrack state after it) and the
//! same bytes must leave by the same ports.

use proptest::prelude::*;

use calxdp::offline::OfflineNode;
use calxdp::parity::pipeline_level::step_frame;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::ports::PortId;
use calxdp_dataplane::worker::TraceRecord;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_tests::gen::{case, cases, load};

/// Where a frame from `src` enters: its pod, the host, or the uplink.
fn ingress(node: &NodeConfig, pkt: &PacketHeader) -> Port {
    if let Some(w) = node.workloads.iter().position(|w| w.ips.contains(&pkt.src)) {
        return Port::Workload(w as u16);
    }
    if node.is_host_ip(pkt.src) {
        return Port::Host;
    }
    Port::Uplink(0)
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

/// What a frame's trace says, without what is only bookkeeping.
fn decided(r: &TraceRecord) -> String {
    format!(
        "{:?} {:?} {:?} {:?} out {:?} to {:?} tracked {} logs {:?} rejected {}",
        r.in_port, r.header, r.verdict, r.decision, r.out_port, r.translated, r.tracked, r.logs, r.rejected
    )
}

/// Runs `groups` (frames of one port each) through a node: each group as one batch, or frame by frame.
fn run(
    node: &NodeConfig,
    rs: &calxdp_policy::resource::ResourceSet,
    groups: &[(PortId, Vec<Vec<u8>>)],
    batched: bool,
) -> (Vec<String>, Vec<(PortId, Vec<u8>)>) {
    let mut n = OfflineNode::new(node.clone(), rs.clone(), false);
    let mut decisions = Vec::new();
    let mut sent = Vec::new();
    for (id, frames) in groups {
        if batched {
            for f in frames {
                n.inject(*id, f.clone()).unwrap();
            }
            decisions.extend(n.settle().iter().map(decided));
        } else {
            for f in frames {
                n.inject(*id, f.clone()).unwrap();
                decisions.extend(n.settle().iter().map(decided));
            }
        }
        for p in n.port_ids() {
            sent.extend(n.take_sent(p).into_iter().map(|f| (p, f)));
        }
    }
    (decisions, sent)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(400), .. ProptestConfig::default() })]

    #[test]
    fn batches_decide_every_frame_as_one_at_a_time(
        c in case(),
        replies in proptest::collection::vec(any::<bool>(), 12),
        repeats in proptest::collection::vec(1usize..4, 12),
        capacity in 3usize..40,
    ) {
        let (mut node, rs) = match load(&c) {
            Ok(x) => x,
            Err(e) => { prop_assume!(false, "{}", e); unreachable!() }
        };
        node.felix.conntrack_capacity = capacity;
        // Half the cases answer drops as Felix's Reject deny action does: the answers are frames sent too.
        if capacity % 2 == 1 {
            node.felix.iptables_filter_deny_action = calxdp_policy::node::DenyAction::Reject;
        }
        // Packets (or replies to the one before), each repeated up to three times: a flow's packets that
        // fall into one batch.
        let mut frames: Vec<(Port, PacketHeader)> = Vec::new();
        let mut last: Option<PacketHeader> = None;
        for (i, pkt) in c.packets.iter().enumerate() {
            let pkt = match (replies[i], last) {
                (true, Some(prev)) => reply_to(&prev),
                _ => *pkt,
            };
            for _ in 0..repeats[i] {
                frames.push((ingress(&node, &pkt), pkt));
            }
            last = Some(pkt);
        }
        // Consecutive frames of one port make one batch.
        let probe = OfflineNode::new(node.clone(), rs.clone(), false);
        let mut groups: Vec<(PortId, Vec<Vec<u8>>)> = Vec::new();
        for (port, pkt) in &frames {
            let id = probe.id_of(*port);
            let frame = step_frame(pkt, None);
            match groups.last_mut() {
                Some((g, fs)) if *g == id && fs.len() < 64 => fs.push(frame),
                _ => groups.push((id, vec![frame])),
            }
        }
        let one = run(&node, &rs, &groups, false);
        let batch = run(&node, &rs, &groups, true);
        prop_assert_eq!(one.0.len(), batch.0.len(), "frames decided");
        for (i, (a, b)) in one.0.iter().zip(&batch.0).enumerate() {
            prop_assert_eq!(a, b, "frame {} decided differently in a batch\n{}", i, c.resources);
        }
        // The same frames left by the same ports (the order may differ where a frame waited for its next
        // hop while a later one to a known neighbour went ahead, as in Linux).
        let (mut a, mut b) = (one.1, batch.1);
        a.sort();
        b.sort();
        prop_assert_eq!(a, b, "the frames that left differ");
    }
}
