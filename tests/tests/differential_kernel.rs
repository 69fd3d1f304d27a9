//! Linux against the reference evaluator: random resource sets and sequences of packets (with replies) on a
//! node programmed the way Felix programs iptables (the kernel parity level), and through the reference
//! evaluator; every packet must get the same verdict, egress, translation, tracking, logging (some cases with
//! each Log rule rate-limited) and answer (some cases with Felix's Reject deny action). The
//! differences docs/kernel-oracle.md lists as known (with their cause) are recognised by
//! [`known_difference`] and reported, not failed; anything else fails the test.
//!
//! Needs root and the iptables-legacy, ipset and conntrack tools; without them it says why and passes.
//! `CALXDP_KERNEL_CASES` sets how many cases run (CI runs a few: each case builds two namespaces).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use calxdp::parity::kernel_level::{self, KernelLevel};
use calxdp::parity::Dataplane;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::reference::{Attach, ReferenceNode};
use calxdp_policy::resource::{Protocol, Resource};
use calxdp_policy::verdict::{Outcome, Verdict};
use calxdp_tests::gen::{case, load, Case};

/// Where a packet from `src` enters: its pod, the host, or the uplink.
fn attach(node: &NodeConfig, pkt: &PacketHeader) -> Attach {
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
    if p.protocol == Protocol::TCP {
        r.tcp_flags = if p.tcp_flags & tcp_flags::SYN != 0 { tcp_flags::SYN | tcp_flags::ACK } else { tcp_flags::ACK };
    }
    match (r.protocol.0, r.icmp_type) {
        (1, 8) => r.icmp_type = 0,
        (58, 128) => r.icmp_type = 129,
        _ => {}
    }
    r
}

/// A difference docs/kernel-oracle.md explains, by its heading there; `None` for anything else.
fn known_difference(
    node: &NodeConfig,
    pkt: &PacketHeader,
    reference: &Outcome,
    kernel: &Outcome,
) -> Option<&'static str> {
    // An IPv4 packet routed back out of the interface it came in by: Linux sends the sender an ICMP redirect
    // first, which resets the destination's ICMP bucket, so a REJECT's answer right after it is held back.
    let back_out = match attach(node, pkt) {
        Attach::Workload(w) => node.workloads.iter().any(|x| x.name == w && x.ips.contains(&pkt.dst)),
        Attach::Uplink(_) => !node.is_host_ip(pkt.dst) && node.local_workload_by_ip(pkt.dst).is_none(),
        Attach::Host => false,
    };
    if back_out && pkt.src.is_ipv4() && reference.rejected && !kernel.rejected {
        return Some("an ICMP redirect holds back a REJECT's answer to a packet routed back out");
    }
    // The same for IPv6 on a node without a global IPv6 address, the other way round: Linux answers the
    // hairpinned packet (from a link-local source), calxdp has no address to answer from.
    let no_global_v6 = !node.uplinks.iter().flat_map(|u| &u.addrs).any(|a| a.is_ipv6());
    if back_out && pkt.src.is_ipv6() && no_global_v6 && !reference.rejected && kernel.rejected {
        return Some("an IPv6 packet routed back out, on a node without a global IPv6 address, is answered by Linux");
    }
    // A flow whose reply tuple is its original tuple (one address and port at both ends): Linux's lookup
    // finds the reply direction first.
    let self_tuple = pkt.src == pkt.dst && (!pkt.has_ports() || pkt.src_port == pkt.dst_port) && !pkt.is_icmp();
    if self_tuple {
        return Some("a flow from an address and port to itself");
    }
    None
}

/// How many positive match blocks Felix renders for a rule (notes/felix-iptables.md §7.2): a port list
/// needing more than one match (several multiport splits, or numbers and named ports), several nets.
fn positive_blocks(r: &calxdp_policy::resource::Rule) -> usize {
    use calxdp_policy::resource::Port;
    let ports = |ps: &[Port]| {
        let slots: usize = ps
            .iter()
            .map(|p| match p {
                Port::Range(a, b) if a == b => 1,
                Port::Range(..) => 2,
                Port::Named(_) => 0,
            })
            .sum();
        let named = ps.iter().filter(|p| matches!(p, Port::Named(_))).count();
        (slots.div_ceil(15) + named > 1) as usize
    };
    ports(&r.source.ports)
        + ports(&r.destination.ports)
        + (r.source.nets.len() > 1) as usize
        + (r.destination.nets.len() > 1) as usize
}

fn brief(p: &PacketHeader) -> String {
    format!(
        "{} {}:{} > {}:{} flags={:#x} icmp={}/{}",
        p.protocol.0, p.src, p.src_port, p.dst, p.dst_port, p.tcp_flags, p.icmp_type, p.icmp_code
    )
}

fn outcome_line(o: &Outcome) -> String {
    let v = if o.verdict == Verdict::Allow { "allow" } else { "drop" };
    let out = o.out.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "{v} out={out} translated={:?} tracked={} logged={} rejected={} ({})",
        o.translated,
        o.tracked,
        !o.logs.is_empty(),
        o.rejected,
        o.reason
    )
}

/// Runs one case through both; the first disagreement that is not a known one, as a message.
fn run_case(c: &Case, replies: &[bool]) -> Result<Vec<String>, String> {
    let (mut node, mut rs) = match load(c) {
        Ok(x) => x,
        Err(_) => return Ok(Vec::new()),
    };
    // Some cases answer drops with Felix's Reject deny action, some rate-limit each Log rule (a burst of
    // one, a minute between tokens: in a case's few seconds a rule logs once).
    if c.resources.len() % 2 == 1 {
        node.felix.iptables_filter_deny_action = calxdp_policy::node::DenyAction::Reject;
    }
    if c.resources.len() % 3 == 0 {
        node.felix.log_rate_limit = calxdp_policy::node::LogRate::parse("1/minute").ok();
        node.felix.log_rate_burst = 1;
    }
    let mut known = Vec::new();
    // Felix renders `protocol` and `notProtocol` into one iptables rule, which iptables refuses, so such a
    // resource set does not load at all (docs/kernel-oracle.md "protocol with notProtocol"). Both sides get
    // the rule without its notProtocol instead, so the rest of the case is still compared.
    let mut stripped = Vec::new();
    for p in rs.policies() {
        if p.ingress.iter().chain(&p.egress).any(|r| r.protocol.is_some() && r.not_protocol.is_some()) {
            let mut q = (**p).clone();
            for r in q.ingress.iter_mut().chain(q.egress.iter_mut()) {
                if r.protocol.is_some() {
                    r.not_protocol = None;
                }
            }
            stripped.push(q);
        }
    }
    if !stripped.is_empty() {
        known.push("protocol with notProtocol: compared without the notProtocol".to_string());
    }
    let three_blocks = rs.policies().any(|p| p.ingress.iter().chain(&p.egress).any(|r| positive_blocks(r) >= 3));
    let named_not_ports = rs.policies().any(|p| {
        p.ingress.iter().chain(&p.egress).any(|r| {
            r.source
                .not_ports
                .iter()
                .chain(&r.destination.not_ports)
                .any(|x| matches!(x, calxdp_policy::resource::Port::Named(_)))
        })
    });
    rs.apply_all(stripped.into_iter().map(|q| Resource::Policy(std::sync::Arc::new(q))));
    let mut reference = ReferenceNode::new(node.clone(), rs.clone());
    let mut kernel = KernelLevel::new(&node, &rs).map_err(|e| format!("kernel level: {e}"))?;
    let mut last: Option<PacketHeader> = None;
    let mut history = String::new();
    for (i, generated) in c.packets.iter().enumerate() {
        let pkt = match (replies[i], last) {
            (true, Some(prev)) => reply_to(&prev),
            _ => *generated,
        };
        // SCTP beyond an association's first packet needs chunks a step does not describe (INIT-ACK,
        // verification tags); the kernel level only builds the opening INIT.
        if pkt.protocol == Protocol::SCTP {
            continue;
        }
        let at = attach(&node, &pkt);
        let a = reference.process(&at, &pkt, None).map_err(|e| format!("reference: {e}"))?;
        let b = kernel.process(&at, &pkt, None).map_err(|e| format!("kernel: {e}"))?;
        history.push_str(&format!("  {i}: {} {:?} -> {}\n", brief(&pkt), at, outcome_line(&b)));
        let same = a.verdict == b.verdict
            && a.out == b.out
            && (a.verdict == Verdict::Drop || a.translated == b.translated)
            && a.tracked == b.tracked
            && a.logs.is_empty() == b.logs.is_empty()
            && a.rejected == b.rejected;
        if !same {
            let why = if three_blocks {
                Some("a rule with three or more positive match blocks (Felix checks only the first two)")
            } else if named_not_ports && !pkt.has_ports() {
                Some("a named notPorts matches packets without ports in Linux")
            } else {
                known_difference(&node, &pkt, &a, &b)
            };
            if let Some(why) = why {
                known.push(format!("step {i} {at:?} {pkt:?}: {why}"));
            } else {
                return Err(format!(
                    "step {i} {at:?} {pkt:?}\n  reference: {}\n  kernel:    {}\nsteps (kernel):\n{history}node:\n{}\nresources:\n{}",
                    outcome_line(&a),
                    outcome_line(&b),
                    c.node,
                    c.resources
                ));
            }
        }
        last = Some(pkt);
    }
    Ok(known)
}

#[test]
#[ignore = "needs root, iptables-legacy, ipset and conntrack: scripts/test runs it with --include-ignored as root"]
fn the_kernel_matches_the_reference() {
    if let Some(why) = kernel_level::unavailable() {
        panic!("the kernel differential cannot run: {why}");
    }
    let cases: u32 = std::env::var("CALXDP_KERNEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let mut runner =
        TestRunner::new(Config { cases, max_shrink_iters: 64, failure_persistence: None, ..Config::default() });
    let strategy = (case(), proptest::collection::vec(any::<bool>(), 12));
    let result = runner.run(&strategy, |(c, replies)| {
        let known = run_case(&c, &replies).map_err(TestCaseError::fail)?;
        for k in known {
            println!("known difference: {k}");
        }
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(proptest::test_runner::TestError::Fail(why, _)) => panic!("the kernel and the reference disagree: {why}"),
        Err(e) => panic!("{e}"),
    }
}
