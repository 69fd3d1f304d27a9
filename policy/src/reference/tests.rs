//! Unit tests of the reference evaluator, one evaluation rule each, citing the semantics section it follows.

use std::net::IpAddr;

use super::{Attach, ReferenceNode};
use crate::node::NodeConfig;
use crate::packet::{tcp_flags, PacketHeader};
use crate::resource::{load_text, Protocol, ResourceSet};
use crate::verdict::{Egress, Reason, Verdict};
use crate::yaml::{parse_documents, Field, Origin};

const NODE: &str = r#"
name: n1
interfaces:
  - {name: eth0, ips: [10.0.0.1/24], gateway: 10.0.0.254}
namespaces:
  - {name: app, labels: {team: a}}
  - {name: kube-system, labels: {name: kube-system}}
workloads:
  - {name: podA, namespace: app, interface: caliA, ips: [192.168.1.10], labels: {app: backend},
     ports: [{name: http, port: 3000, protocol: TCP}]}
  - {name: podB, namespace: app, interface: caliB, ips: [192.168.1.11], labels: {app: frontend}}
  - {name: podK, namespace: kube-system, interface: caliK, ips: [192.168.1.20], labels: {k8s-app: kube-dns}}
remoteEndpoints:
  - {name: podC, namespace: app, ips: [192.168.2.10], labels: {app: backend}}
services:
  - {name: svc-a, namespace: app, protocol: TCP, clusterIP: 10.96.0.50, port: 80, nodePort: 30080, backends: ["192.168.1.10:3000"]}
config:
  defaultEndpointToHostAction: Accept
"#;

const HEP: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {host-endpoint: "true"}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [10.0.0.1]}
"#;

/// The test node with DefaultEndpointToHostAction `epha` ("" keeps Accept).
fn node(epha: &str) -> NodeConfig {
    let text = if epha.is_empty() {
        NODE.to_string()
    } else {
        NODE.replace("defaultEndpointToHostAction: Accept", &format!("defaultEndpointToHostAction: {epha}"))
    };
    let origin = Origin::file("node.yaml");
    let docs = parse_documents(&text, &origin).unwrap();
    NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
}

fn resources(yaml: &str) -> ResourceSet {
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(yaml, &Origin::file("res.yaml")).unwrap().into_iter().map(|d| d.resource));
    rs
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> PacketHeader {
    PacketHeader {
        src: src.parse::<IpAddr>().unwrap(),
        dst: dst.parse::<IpAddr>().unwrap(),
        protocol: Protocol::TCP,
        src_port: sport,
        dst_port: dport,
        tcp_flags: flags,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
    }
}

fn syn(src: &str, dst: &str, dport: u16) -> PacketHeader {
    tcp(src, 40000, dst, dport, tcp_flags::SYN)
}

fn run(n: &mut ReferenceNode, at: Attach, p: PacketHeader) -> (Verdict, Reason) {
    let o = n.process(&at, &p, None).unwrap();
    (o.verdict, o.reason)
}

fn verdict(yaml: &str, at: Attach, p: PacketHeader) -> Verdict {
    let mut n = ReferenceNode::new(node(""), resources(yaml));
    run(&mut n, at, p).0
}

fn pod(name: &str) -> Attach {
    Attach::Workload(name.into())
}

fn eth0() -> Attach {
    Attach::Uplink("eth0".into())
}

const X: &str = "203.0.113.5";

// semantics §4.3.3 / §1.4: no policy ⇒ the kns profile allows pod traffic.
#[test]
fn pods_without_policy_are_allowed_by_their_namespace_profile() {
    let mut n = ReferenceNode::new(node(""), ResourceSet::new());
    let (v, r) = run(&mut n, pod("podB"), syn("192.168.1.11", "192.168.1.10", 3000));
    assert_eq!(v, Verdict::Allow);
    assert!(
        matches!(r, Reason::Rule(ref rr) if matches!(rr.owner, crate::verdict::RuleOwner::Profile(ref p) if p == "kns.app")),
        "{r}"
    );
}

// semantics §4.3.1: a selecting policy with no matching rule ends in the end-of-tier drop.
#[test]
fn selected_without_rules_is_end_of_tier_drop() {
    let yaml = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: app}\nspec: {selector: app == 'backend', types: [Ingress]}\n";
    let mut n = ReferenceNode::new(node(""), resources(yaml));
    let (v, r) = run(&mut n, pod("podB"), syn("192.168.1.11", "192.168.1.10", 3000));
    assert_eq!(v, Verdict::Drop);
    assert!(matches!(r, Reason::EndOfTier { ref tier, .. } if tier == "default"), "{r}");
}

// semantics §4.3.2: a later policy in the same tier with an Allow still allows after a "default deny".
#[test]
fn default_deny_is_not_a_deny() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: panic}
spec: {order: 2000, selector: all(), ingress: [{action: Allow}]}
"#;
    assert_eq!(verdict(yaml, eth0(), syn(X, "192.168.1.10", 3000)), Verdict::Allow);
}

// semantics §4.2: Deny is final; a lower order runs first; absent order is +∞.
#[test]
fn order_and_final_deny() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b-allow}
spec: {selector: all(), ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a-deny}
spec: {order: 10, selector: all(), ingress: [{action: Deny}]}
"#;
    assert_eq!(verdict(yaml, pod("podB"), syn("192.168.1.11", "192.168.1.10", 1)), Verdict::Drop);
}

// semantics §4.2: Pass ends the tier; in the last tier it runs the profiles (allow for pods).
#[test]
fn pass_skips_the_rest_of_the_tier() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-all}
spec: {tier: security, order: 1, selector: all(), ingress: [{action: Pass}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all}
spec: {tier: security, order: 2, selector: all(), ingress: [{action: Deny}]}
"#;
    assert_eq!(verdict(yaml, pod("podB"), syn("192.168.1.11", "192.168.1.10", 1)), Verdict::Allow);
}

// semantics §1.5: a tier whose defaultAction is Pass lets unmatched traffic go on to the next tier.
#[test]
fn tier_default_pass() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: only-dns}
spec: {tier: platform, selector: all(), ingress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]}
"#;
    assert_eq!(verdict(yaml, pod("podB"), syn("192.168.1.11", "192.168.1.10", 1)), Verdict::Allow);
    let deny_tier = yaml.replace("defaultAction: Pass", "defaultAction: Deny");
    assert_eq!(verdict(&deny_tier, pod("podB"), syn("192.168.1.11", "192.168.1.10", 1)), Verdict::Drop);
}

// semantics §1.2: staged policies are loaded and never enforced.
#[test]
fn staged_policies_have_no_effect() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: staged-deny}
spec: {selector: all(), ingress: [{action: Deny}]}
"#;
    assert_eq!(verdict(yaml, pod("podB"), syn("192.168.1.11", "192.168.1.10", 1)), Verdict::Allow);
}

// semantics §4.3.6: a Log-only policy makes the tier present (end-of-tier drop) and logs.
#[test]
fn log_only_policy_denies_and_logs() {
    let yaml = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: log}\nspec: {selector: all(), ingress: [{action: Log}]}\n";
    let mut n = ReferenceNode::new(node(""), resources(yaml));
    let o = n.process(&pod("podB"), &syn("192.168.1.11", "192.168.1.10", 1), None).unwrap();
    assert_eq!(o.verdict, Verdict::Drop);
    assert_eq!(o.logs.len(), 1);
    assert_eq!(o.logs[0].prefix, "calico-packet");
}

// semantics §7.6: pod to own host follows DefaultEndpointToHostAction after the pod's egress policy.
#[test]
fn endpoint_to_host_action() {
    let mut n = ReferenceNode::new(node("Drop"), ResourceSet::new());
    let (v, r) = run(&mut n, pod("podA"), syn("192.168.1.10", "10.0.0.1", 22));
    assert_eq!(v, Verdict::Drop);
    assert_eq!(r, Reason::EndpointToHost(crate::node::EndpointToHostAction::Drop));
}

// semantics §7.5: an empty HEP drops terminated traffic except inbound failsafes; outbound-only ports stay shut.
#[test]
fn failsafes_are_per_direction() {
    let mut n = ReferenceNode::new(node(""), resources(HEP));
    assert_eq!(run(&mut n, eth0(), syn(X, "10.0.0.1", 8080)).0, Verdict::Drop);
    let (v, r) = run(&mut n, eth0(), syn(X, "10.0.0.1", 22));
    assert_eq!(v, Verdict::Allow);
    assert_eq!(r, Reason::Failsafe { inbound: true, protocol: 6, port: 22 });
    assert_eq!(run(&mut n, Attach::Host, syn("10.0.0.1", X, 22)).0, Verdict::Drop);
}

// semantics §7.4: forwarded traffic through a HEP is allowed until an applyOnForward policy applies.
#[test]
fn forward_default_allow_then_aof_policy() {
    let mut n = ReferenceNode::new(node(""), resources(HEP));
    assert_eq!(run(&mut n, eth0(), syn(X, "192.168.1.10", 3000)).0, Verdict::Allow);
    let aof = format!(
        "{HEP}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: aof}}\nspec: {{selector: has(host-endpoint), applyOnForward: true, ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [3000]}}}}]}}\n"
    );
    n.set_resources(resources(&aof));
    assert_eq!(run(&mut n, eth0(), tcp(X, 40001, "192.168.1.10", 3000, tcp_flags::SYN)).0, Verdict::Drop);
}

// semantics §7.3: preDNAT sees the original destination; service NAT then translates (§3).
#[test]
fn prednat_sees_the_nodeport_and_nat_translates() {
    let yaml = format!(
        "{HEP}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: pd}}\nspec: {{selector: has(host-endpoint), preDNAT: true, applyOnForward: true, ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [3000]}}}}]}}\n"
    );
    let mut n = ReferenceNode::new(node(""), resources(&yaml));
    let o = n.process(&eth0(), &syn(X, "10.0.0.1", 30080), None).unwrap();
    assert_eq!(o.verdict, Verdict::Allow, "{:?}", o.reason);
    assert_eq!(o.out, Some(Egress::Workload("podA".into())));
    assert_eq!(o.translated, Some("192.168.1.10:3000".parse().unwrap()));
}

// semantics §8.2: established flows survive a policy change; §8.3: a SYN-ACK with no entry is INVALID.
#[test]
fn conntrack_survives_policy_change_and_invalid_is_dropped() {
    let mut n = ReferenceNode::new(node(""), ResourceSet::new());
    assert_eq!(
        run(&mut n, pod("podB"), tcp("192.168.1.11", 5000, "192.168.1.10", 80, tcp_flags::SYN)).0,
        Verdict::Allow
    );
    assert_eq!(
        run(&mut n, pod("podA"), tcp("192.168.1.10", 80, "192.168.1.11", 5000, tcp_flags::SYN | tcp_flags::ACK)).0,
        Verdict::Allow
    );
    n.set_resources(resources("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: d}\nspec: {selector: all(), ingress: [{action: Deny}], egress: [{action: Deny}]}\n"));
    let (v, r) = run(&mut n, pod("podB"), tcp("192.168.1.11", 5000, "192.168.1.10", 80, tcp_flags::ACK));
    assert_eq!((v, r), (Verdict::Allow, Reason::Established));
    let (v, r) =
        run(&mut n, pod("podA"), tcp("192.168.1.10", 81, "192.168.1.11", 5001, tcp_flags::SYN | tcp_flags::ACK));
    assert_eq!((v, r), (Verdict::Drop, Reason::Invalid));
}

// semantics §2.2: an NP rule selector only matches its own namespace; namespaceSelector replaces that.
#[test]
fn namespaced_rule_selectors() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: from-dns, namespace: app}
spec:
  selector: app == 'backend'
  ingress: [{action: Allow, source: {selector: k8s-app == 'kube-dns'}}]
"#;
    // podK is in kube-system, so the plain selector (scoped to app) does not match it.
    assert_eq!(verdict(yaml, pod("podK"), syn("192.168.1.20", "192.168.1.10", 3000)), Verdict::Drop);
    let global = yaml.replace(
        "selector: k8s-app == 'kube-dns'}",
        "selector: k8s-app == 'kube-dns', namespaceSelector: name == 'kube-system'}",
    );
    assert_eq!(verdict(&global, pod("podK"), syn("192.168.1.20", "192.168.1.10", 3000)), Verdict::Allow);
}

// semantics §3 "Named port": resolved per destination endpoint.
#[test]
fn named_ports() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: http, namespace: app}
spec: {selector: app == 'backend', ingress: [{action: Allow, protocol: TCP, destination: {ports: [http]}}]}
"#;
    assert_eq!(verdict(yaml, pod("podB"), syn("192.168.1.11", "192.168.1.10", 3000)), Verdict::Allow);
    assert_eq!(verdict(yaml, pod("podB"), syn("192.168.1.11", "192.168.1.10", 8080)), Verdict::Drop);
}

// semantics §3 "IP-family filtering": a negated IPv6-only CIDR list removes the rule for IPv4.
#[test]
fn family_filtering_of_negated_cidrs() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: v6}
spec: {selector: all(), types: [Egress], egress: [{action: Deny, destination: {notNets: ["fd00::/8"]}}, {action: Allow}]}
"#;
    assert_eq!(verdict(yaml, pod("podA"), syn("192.168.1.10", "8.8.8.8", 443)), Verdict::Allow);
}

// semantics §7.1 (R): a pod may only send from its own address.
#[test]
fn spoofed_pod_source_is_dropped() {
    let mut n = ReferenceNode::new(node(""), ResourceSet::new());
    assert_eq!(
        run(&mut n, pod("podA"), syn("192.168.9.9", "192.168.1.11", 80)),
        (Verdict::Drop, Reason::SourceSpoofed)
    );
}

// semantics §7.2 (O) step 2: host to a local pod is never policed.
#[test]
fn host_to_local_pod_is_always_allowed() {
    let yaml = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: d}\nspec: {selector: all(), ingress: [{action: Deny}]}\n";
    let mut n = ReferenceNode::new(node(""), resources(yaml));
    assert_eq!(
        run(&mut n, Attach::Host, syn("10.0.0.1", "192.168.1.10", 80)),
        (Verdict::Allow, Reason::HostToLocalWorkload)
    );
}

// semantics §8.4: one-sided doNotTrack lets the SYN in untracked and the tracked SYN-ACK is INVALID.
#[test]
fn one_sided_untracked_policy() {
    let yaml = format!(
        "{HEP}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: dnt}}\nspec: {{selector: has(host-endpoint), doNotTrack: true, applyOnForward: true, ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [7777]}}}}]}}\n"
    );
    let mut n = ReferenceNode::new(node(""), resources(&yaml));
    let o = n.process(&eth0(), &tcp(X, 5000, "10.0.0.1", 7777, tcp_flags::SYN), None).unwrap();
    assert_eq!((o.verdict, o.tracked), (Verdict::Allow, false));
    let o = n.process(&Attach::Host, &tcp("10.0.0.1", 7777, X, 5000, tcp_flags::SYN | tcp_flags::ACK), None).unwrap();
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Invalid));
}

// semantics §7.7: host to its own address crosses `lo`, where only the `*` host endpoint applies.
#[test]
fn star_hep_covers_loopback() {
    let star = HEP.replace("interfaceName: eth0", "interfaceName: \"*\"");
    let mut n = ReferenceNode::new(node(""), resources(&star));
    assert_eq!(run(&mut n, Attach::Host, syn("10.0.0.1", "10.0.0.1", 10248)).0, Verdict::Drop);
    let mut n = ReferenceNode::new(node(""), resources(HEP));
    assert_eq!(run(&mut n, Attach::Host, syn("10.0.0.1", "10.0.0.1", 10248)).0, Verdict::Allow);
}

// semantics §8.3: a UDP flow expires 30 s after its last packet when unreplied.
#[test]
fn udp_unreplied_timeout() {
    let mut n = ReferenceNode::new(node(""), ResourceSet::new());
    let mut p = syn("192.168.1.11", "192.168.1.10", 53);
    p.protocol = Protocol::UDP;
    p.tcp_flags = 0;
    let o = n.process(&pod("podB"), &p, None).unwrap();
    assert!(o.tracked);
    n.advance(std::time::Duration::from_secs(31));
    let o = n.process(&pod("podB"), &p, None).unwrap();
    assert_ne!(o.reason, Reason::Established);
}
