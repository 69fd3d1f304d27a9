//! The driver's model end to end: Felix's messages → the state → the lowered model → the reference
//! evaluator's verdicts, for the IP set forms the emulator never produces from YAML (set intersection,
//! named ports filtered by a set, several negated sets, members covered by a wider member), tier order
//! merged from endpoints, staged policies, and every broken-stream check naming its message.

use std::collections::HashMap;
use std::net::IpAddr;

use prost::Message;

use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::reference::{Attach, ReferenceNode};
use calxdp_policy::resource::Protocol;
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::{parse_documents, Field, Origin};

use super::driver::{read_all, FrontEnd};
use super::framing::write_frame;
use super::proto::{self, ip_set_update::IpSetType, to_dataplane::Payload, ToDataplane};

const NODE: &str = r#"
name: n1
interfaces:
  - {name: eth0, ips: [10.250.0.1/24], gateway: 10.250.0.254}
"#;

fn base() -> NodeConfig {
    let origin = Origin::file("node.yaml");
    let docs = parse_documents(NODE, &origin).unwrap();
    NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
}

/// Numbers messages from 0, as Felix does.
struct Stream(Vec<ToDataplane>);

impl Stream {
    fn new() -> Stream {
        let mut s = Stream(Vec::new());
        s.push(Payload::ConfigUpdate(proto::ConfigUpdate { config: HashMap::new() }));
        s
    }
    fn push(&mut self, p: Payload) -> &mut Stream {
        let n = self.0.len() as u64;
        self.0.push(ToDataplane { sequence_number: n, payload: Some(p) });
        self
    }
    fn set(&mut self, id: &str, kind: IpSetType, members: &[&str]) -> &mut Stream {
        self.push(Payload::IpsetUpdate(proto::IpSetUpdate {
            id: id.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            r#type: kind as i32,
        }))
    }
    fn policy(&mut self, name: &str, kind: &str, tier: &str, inbound: Vec<proto::Rule>) -> &mut Stream {
        self.push(Payload::ActivePolicyUpdate(proto::ActivePolicyUpdate {
            id: Some(pid(name, kind)),
            policy: Some(proto::Policy { inbound_rules: inbound, tier: tier.into(), ..Default::default() }),
        }))
    }
    fn profile(&mut self, name: &str, action: &str) -> &mut Stream {
        let rule = proto::Rule { action: action.into(), ..Default::default() };
        self.push(Payload::ActiveProfileUpdate(proto::ActiveProfileUpdate {
            id: Some(proto::ProfileId { name: name.into() }),
            profile: Some(proto::Profile { inbound_rules: vec![rule.clone()], outbound_rules: vec![rule] }),
        }))
    }
    fn workload(&mut self, pod: &str, iface: &str, ip: &str, tiers: Vec<proto::TierInfo>) -> &mut Stream {
        self.push(Payload::WorkloadEndpointUpdate(proto::WorkloadEndpointUpdate {
            id: Some(wid(pod)),
            endpoint: Some(proto::WorkloadEndpoint {
                state: "active".into(),
                name: iface.into(),
                profile_ids: vec!["kns.app".into()],
                ipv4_nets: vec![format!("{ip}/32")],
                tiers,
                ..Default::default()
            }),
        }))
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in &self.0 {
            write_frame(&mut out, m).unwrap();
        }
        out
    }
}

fn pid(name: &str, kind: &str) -> proto::PolicyId {
    proto::PolicyId { name: name.into(), namespace: String::new(), kind: kind.into() }
}

fn wid(pod: &str) -> proto::WorkloadEndpointId {
    proto::WorkloadEndpointId {
        orchestrator_id: "k8s".into(),
        workload_id: format!("app/{pod}"),
        endpoint_id: "eth0".into(),
    }
}

fn tier(name: &str, default_action: &str, ingress: &[(&str, &str)]) -> proto::TierInfo {
    proto::TierInfo {
        name: name.into(),
        ingress_policies: ingress.iter().map(|(n, k)| pid(n, k)).collect(),
        egress_policies: Vec::new(),
        default_action: default_action.into(),
    }
}

fn named(n: &str) -> Option<proto::Protocol> {
    Some(proto::Protocol { number_or_name: Some(proto::protocol::NumberOrName::Name(n.into())) })
}

fn feed(s: &Stream) -> Result<FrontEnd, String> {
    let mut front = FrontEnd::new(&base());
    read_all(&mut front, &mut &s.bytes()[..], None).map_err(|e| e.to_string())?;
    Ok(front)
}

fn verdict(front: &FrontEnd, src: &str, dst: &str, proto: Protocol, dport: u16) -> Verdict {
    let (node, resources) = front.model().unwrap();
    let mut r = ReferenceNode::new(node, resources);
    let pkt = PacketHeader {
        src: src.parse::<IpAddr>().unwrap(),
        dst: dst.parse::<IpAddr>().unwrap(),
        protocol: proto,
        src_port: if proto == Protocol::ICMP { 0 } else { 40000 },
        dst_port: dport,
        tcp_flags: if proto == Protocol::TCP { tcp_flags::SYN } else { 0 },
        icmp_type: if proto == Protocol::ICMP { 8 } else { 0 },
        icmp_code: 0,
        icmp_id: if proto == Protocol::ICMP { 7 } else { 0 },
    };
    r.process(&Attach::Uplink("eth0".into()), &pkt, None).unwrap().verdict
}

/// A: 10/8; B: 10.1/16 and 192.168/16; C: (10.9.9.9, udp 53) and (10.8.8.8, udp 53); D: 10.9/16;
/// E: 172.16/12. Pod w2 (10.9.9.9) is selected by `p` in tier `t1`.
fn sets_stream() -> Stream {
    let mut s = Stream::new();
    s.set("s:A", IpSetType::Net, &["10.0.0.0/8"])
        .set("s:B", IpSetType::Net, &["10.1.0.0/16", "192.168.0.0/16"])
        .set("n:C", IpSetType::IpAndPort, &["10.9.9.9,udp:53", "10.8.8.8,udp:53"])
        .set("s:D", IpSetType::Net, &["10.9.0.0/16"])
        .set("s:E", IpSetType::Net, &["172.16.0.0/12"]);
    let rules = vec![
        // In A and in B.
        proto::Rule {
            action: "allow".into(),
            protocol: named("tcp"),
            src_ip_set_ids: vec!["s:A".into(), "s:B".into()],
            ..Default::default()
        },
        // To an address in D whose (address, udp, port) is in C.
        proto::Rule {
            action: "allow".into(),
            protocol: named("udp"),
            dst_ip_set_ids: vec!["s:D".into()],
            dst_named_port_ip_set_ids: vec!["n:C".into()],
            ..Default::default()
        },
        // In neither A nor E.
        proto::Rule {
            action: "allow".into(),
            protocol: named("icmp"),
            not_src_ip_set_ids: vec!["s:A".into(), "s:E".into()],
            ..Default::default()
        },
    ];
    s.policy("p", "GlobalNetworkPolicy", "t1", rules).profile("kns.app", "allow").workload(
        "w2",
        "cali2",
        "10.9.9.9",
        vec![tier("t1", "Deny", &[("p", "GlobalNetworkPolicy")])],
    );
    s.push(Payload::InSync(proto::InSync {}));
    s
}

#[test]
fn rules_match_by_ip_set_as_felix_means_them() {
    let front = feed(&sets_stream()).unwrap();
    let v = |src, proto, port| verdict(&front, src, "10.9.9.9", proto, port);
    // Intersection: 10.1.2.3 is in A (via 10/8) and in B (via 10.1/16).
    assert_eq!(v("10.1.2.3", Protocol::TCP, 80), Verdict::Allow);
    assert_eq!(v("192.168.0.1", Protocol::TCP, 80), Verdict::Drop, "in B only");
    assert_eq!(v("10.2.0.1", Protocol::TCP, 80), Verdict::Drop, "in A only");
    // Named-port set C, filtered by D.
    assert_eq!(v("192.168.0.1", Protocol::UDP, 53), Verdict::Allow);
    assert_eq!(v("192.168.0.1", Protocol::UDP, 54), Verdict::Drop);
    // Negated sets: in none of A, E.
    assert_eq!(v("192.168.0.1", Protocol::ICMP, 0), Verdict::Allow);
    assert_eq!(v("172.16.3.4", Protocol::ICMP, 0), Verdict::Drop);
    assert_eq!(v("10.5.5.5", Protocol::ICMP, 0), Verdict::Drop);
}

#[test]
fn deltas_and_full_updates_change_membership() {
    let mut s = sets_stream();
    // 192.168.0.1 joins A by a delta, then B is replaced in full without 192.168/16.
    s.push(Payload::IpsetDeltaUpdate(proto::IpSetDeltaUpdate {
        id: "s:A".into(),
        added_members: vec!["192.168.0.1/32".into()],
        removed_members: vec![],
    }));
    let front = feed(&s).unwrap();
    assert_eq!(verdict(&front, "192.168.0.1", "10.9.9.9", Protocol::TCP, 80), Verdict::Allow);
    s.set("s:B", IpSetType::Net, &["10.1.0.0/16"]);
    let front = feed(&s).unwrap();
    assert_eq!(verdict(&front, "192.168.0.1", "10.9.9.9", Protocol::TCP, 80), Verdict::Drop);
    assert_eq!(verdict(&front, "10.1.0.1", "10.9.9.9", Protocol::TCP, 80), Verdict::Allow);
}

#[test]
fn tiers_pass_and_staged_policies() {
    let mut s = Stream::new();
    let allow_all = vec![proto::Rule { action: "allow".into(), ..Default::default() }];
    let deny_all = vec![proto::Rule { action: "deny".into(), ..Default::default() }];
    let pass = vec![proto::Rule { action: "next-tier".into(), ..Default::default() }];
    s.policy("staged-deny", "StagedGlobalNetworkPolicy", "first", deny_all.clone())
        .policy("passer", "GlobalNetworkPolicy", "second", pass)
        .policy("denier", "GlobalNetworkPolicy", "third", deny_all)
        .policy("allower", "GlobalNetworkPolicy", "fourth", allow_all)
        .profile("kns.app", "deny");
    // w1: tier `first` holds only a staged policy (not enforced, no end-of-tier drop), `second` passes,
    // then `fourth` allows. w2: `second` passes, `third` denies. The two lists agree on the order
    // first < second < third < fourth only when merged.
    s.workload(
        "w1",
        "cali1",
        "10.9.9.1",
        vec![
            tier("first", "Deny", &[("staged-deny", "StagedGlobalNetworkPolicy")]),
            tier("second", "Deny", &[("passer", "GlobalNetworkPolicy")]),
            tier("fourth", "Deny", &[("allower", "GlobalNetworkPolicy")]),
        ],
    );
    s.workload(
        "w2",
        "cali2",
        "10.9.9.2",
        vec![
            tier("second", "Deny", &[("passer", "GlobalNetworkPolicy")]),
            tier("third", "Deny", &[("denier", "GlobalNetworkPolicy")]),
            tier("fourth", "Deny", &[("allower", "GlobalNetworkPolicy")]),
        ],
    );
    s.push(Payload::InSync(proto::InSync {}));
    let front = feed(&s).unwrap();
    assert_eq!(verdict(&front, "10.250.0.9", "10.9.9.1", Protocol::TCP, 80), Verdict::Allow);
    assert_eq!(verdict(&front, "10.250.0.9", "10.9.9.2", Protocol::TCP, 80), Verdict::Drop);
}

#[test]
fn broken_streams_name_the_message() {
    let check = |s: &Stream, want: &str| {
        let e = feed(s).err().unwrap_or_else(|| panic!("accepted; expected '{want}'"));
        assert!(e.contains(want), "{e}");
    };
    // A policy naming a set never sent.
    let mut s = Stream::new();
    s.policy(
        "p",
        "GlobalNetworkPolicy",
        "default",
        vec![proto::Rule { action: "allow".into(), src_ip_set_ids: vec!["s:nope".into()], ..Default::default() }],
    );
    check(&s, "message 1 (ActivePolicyUpdate): GlobalNetworkPolicy/p refers to unknown IP set 's:nope'");
    // An endpoint naming a policy never sent, and a profile never sent.
    let mut s = Stream::new();
    s.profile("kns.app", "allow").workload(
        "w",
        "cali1",
        "10.9.9.1",
        vec![tier("t", "Deny", &[("p", "GlobalNetworkPolicy")])],
    );
    check(
        &s,
        "message 2 (WorkloadEndpointUpdate): k8s/app/w/eth0: tier t refers to unknown policy GlobalNetworkPolicy/p",
    );
    let mut s = Stream::new();
    s.workload("w", "cali1", "10.9.9.1", vec![]);
    check(&s, "message 1 (WorkloadEndpointUpdate): k8s/app/w/eth0: refers to unknown profile 'kns.app'");
    // A delta for a set never sent; a set removed while a rule uses it; a bad member.
    let mut s = Stream::new();
    s.push(Payload::IpsetDeltaUpdate(proto::IpSetDeltaUpdate { id: "s:x".into(), ..Default::default() }));
    check(&s, "message 1 (IPSetDeltaUpdate): delta for unknown IP set 's:x'");
    let mut s = sets_stream();
    s.push(Payload::IpsetRemove(proto::IpSetRemove { id: "s:A".into() }));
    check(&s, "(IPSetRemove): IP set 's:A' is still used by 2 rule(s)");
    let mut s = Stream::new();
    s.set("n:x", IpSetType::IpAndPort, &["10.0.0.1:80"]);
    check(&s, "message 1 (IPSetUpdate): IP set 'n:x': member '10.0.0.1:80' is not <ip>,<tcp|udp|sctp>:<port>");
    // Not starting with ConfigUpdate; a bad config value.
    let mut s = Stream(Vec::new());
    s.push(Payload::InSync(proto::InSync {}));
    check(&s, "message 0 (InSync): Felix sends ConfigUpdate first");
    let mut s = Stream(Vec::new());
    let mut config = HashMap::new();
    config.insert("DefaultEndpointToHostAction".to_string(), "Sometimes".to_string());
    s.push(Payload::ConfigUpdate(proto::ConfigUpdate { config }));
    check(&s, "message 0 (ConfigUpdate): DefaultEndpointToHostAction: 'Sometimes' is not one of");
    // A length prefix over the limit; a frame that is not a ToDataplane.
    let mut front = FrontEnd::new(&base());
    let huge = u64::MAX.to_le_bytes();
    let e = read_all(&mut front, &mut &huge[..], None).unwrap_err().to_string();
    assert!(e.contains(&format!("the first frame: length prefix {}", u64::MAX)), "{e}");
    let mut bytes = Stream::new().bytes();
    bytes.extend_from_slice(&3u64.to_le_bytes());
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    let e = read_all(&mut front, &mut &bytes[..], None).unwrap_err().to_string();
    assert!(e.contains("the frame after message 0: not a ToDataplane message"), "{e}");
}

#[test]
fn unknown_fields_and_cases_are_ignored() {
    // Field 99 inside the envelope (a oneof case this file does not declare, say a newer Felix's) and an
    // unknown field 50 inside a known IPSetUpdate: both skipped as protobuf skips them.
    let mut bytes = ToDataplane {
        sequence_number: 0,
        payload: Some(Payload::ConfigUpdate(proto::ConfigUpdate { config: HashMap::new() })),
    }
    .encode_to_vec();
    let mut unknown_case = vec![(99 << 3 | 2) as u8 | 0x80, (99 >> 4) as u8, 2, 0x08, 0x01];
    let mut s = Stream::new();
    s.set("s:A", IpSetType::Net, &["10.0.0.0/8"]);
    let mut set_msg = s.0[1].encode_to_vec();
    // Field 50, varint 1: tag (50 << 3) = 400 = 0x90 0x03.
    set_msg.extend_from_slice(&[0x90, 0x03, 0x01]);
    let decoded = ToDataplane::decode(&set_msg[..]).unwrap();
    assert!(matches!(decoded.payload, Some(Payload::IpsetUpdate(_))));
    let mut front = FrontEnd::new(&base());
    front.feed(ToDataplane::decode(&bytes[..]).unwrap()).unwrap();
    bytes.clear();
    bytes.append(&mut unknown_case);
    let unknown = ToDataplane::decode(&bytes[..]).unwrap();
    assert!(unknown.payload.is_none());
    assert_eq!(front.feed(unknown).unwrap(), super::state::Applied::Ignored);
    front.feed(decoded).unwrap();
    assert!(front.state.ip_sets.contains_key("s:A"));
}

#[test]
fn host_endpoint_untracked_tiers_keep_their_order() {
    // Tier `security` is named only in the untracked lists; it must still come before `default`, whose
    // untracked policy allows everything.
    let mut s = Stream::new();
    let deny_telnet = vec![proto::Rule {
        action: "deny".into(),
        protocol: named("tcp"),
        dst_ports: vec![proto::PortRange { first: 23, last: 23 }],
        ..Default::default()
    }];
    let allow_all = vec![proto::Rule { action: "allow".into(), ..Default::default() }];
    let untracked = |name: &str, tier: &str, rules: Vec<proto::Rule>| {
        Payload::ActivePolicyUpdate(proto::ActivePolicyUpdate {
            id: Some(pid(name, "GlobalNetworkPolicy")),
            policy: Some(proto::Policy {
                inbound_rules: rules,
                untracked: true,
                tier: tier.into(),
                ..Default::default()
            }),
        })
    };
    s.push(untracked("raw-deny-telnet", "security", deny_telnet));
    s.push(untracked("raw-allow", "default", allow_all.clone()));
    s.policy("host-normal", "GlobalNetworkPolicy", "default", allow_all);
    s.push(Payload::HostEndpointUpdate(proto::HostEndpointUpdate {
        id: Some(proto::HostEndpointId { endpoint_id: "n1-eth0".into() }),
        endpoint: Some(proto::HostEndpoint {
            name: "eth0".into(),
            untracked_tiers: vec![
                tier("security", "Pass", &[("raw-deny-telnet", "GlobalNetworkPolicy")]),
                tier("default", "Pass", &[("raw-allow", "GlobalNetworkPolicy")]),
            ],
            tiers: vec![tier("default", "Deny", &[("host-normal", "GlobalNetworkPolicy")])],
            ..Default::default()
        }),
    }));
    s.push(Payload::InSync(proto::InSync {}));
    let front = feed(&s).unwrap();
    assert_eq!(verdict(&front, "10.250.0.9", "10.250.0.1", Protocol::TCP, 23), Verdict::Drop);
    assert_eq!(verdict(&front, "10.250.0.9", "10.250.0.1", Protocol::TCP, 8080), Verdict::Allow);
}

#[test]
fn a_policy_in_endpoints_tiers_cannot_be_removed_until_the_last_endpoint_naming_it_goes() {
    let remove_policy = |s: &mut Stream| {
        s.push(Payload::ActivePolicyRemove(proto::ActivePolicyRemove { id: Some(pid("p", "GlobalNetworkPolicy")) }));
    };
    let remove_workload = |s: &mut Stream, pod: &str| {
        s.push(Payload::WorkloadEndpointRemove(proto::WorkloadEndpointRemove { id: Some(wid(pod)) }));
    };
    let shared = || vec![tier("t", "Deny", &[("p", "GlobalNetworkPolicy")])];
    let other = || vec![tier("t", "Deny", &[("q", "GlobalNetworkPolicy"), ("p", "GlobalNetworkPolicy")])];
    let mut s = Stream::new();
    s.profile("kns.app", "allow")
        .policy("p", "GlobalNetworkPolicy", "t", vec![])
        .policy("q", "GlobalNetworkPolicy", "t", vec![])
        .workload("a", "cali1", "10.9.9.1", shared())
        .workload("b", "cali2", "10.9.9.2", shared())
        .workload("c", "cali3", "10.9.9.3", other());
    // Three endpoints name p, through two distinct tier lists.
    let mut refused = Stream(s.0.clone());
    remove_policy(&mut refused);
    let e = feed(&refused).err().expect("removing a policy endpoints name is refused");
    assert!(e.contains("GlobalNetworkPolicy/p is still in the tiers of 3 endpoint(s)"), "{e}");
    // One of the two sharing a list goes, then the one with the other list: b still names p.
    remove_workload(&mut s, "a");
    remove_workload(&mut s, "c");
    let mut refused = Stream(s.0.clone());
    remove_policy(&mut refused);
    let e = feed(&refused).err().expect("b still names p");
    assert!(e.contains("still in the tiers of 1 endpoint(s)"), "{e}");
    // A changed endpoint lets go of its old list: b moves to a list without p, and p can go.
    s.workload("b", "cali2", "10.9.9.2", vec![tier("t", "Deny", &[("q", "GlobalNetworkPolicy")])]);
    remove_policy(&mut s);
    let front = feed(&s).expect("no endpoint names p any more");
    assert!(!front.state.policies.keys().any(|k| k.name == "p"));
    // Whereas q, which b's new list names, is still held.
    let mut refused = Stream(s.0.clone());
    refused.push(Payload::ActivePolicyRemove(proto::ActivePolicyRemove { id: Some(pid("q", "GlobalNetworkPolicy")) }));
    let e = feed(&refused).err().expect("b names q");
    assert!(e.contains("GlobalNetworkPolicy/q is still in the tiers of 1 endpoint(s)"), "{e}");
}

/// The decisions of every workload's normal programs (ingress and egress) of the tables in force, in node
/// order, over every pair of `addresses` on TCP 80 and UDP 53.
fn decisions(publisher: &crate::publisher::TablePublisher, addresses: &[&str]) -> Vec<(String, Vec<String>)> {
    use calxdp_policy::ids::EndpointRef;
    use calxdp_policy::resolve::{Direction, Stage};
    let tables = publisher.slot().hold();
    let mut out = Vec::new();
    for (i, w) in tables.world.node.workloads.iter().enumerate() {
        let mut ends = Vec::new();
        for d in [Direction::Ingress, Direction::Egress] {
            let program = tables.compiled.program(EndpointRef::Workload(i), Stage::Normal, d).expect("a program");
            for src in addresses {
                for dst in addresses {
                    for (protocol, dst_port) in [(Protocol::TCP, 80), (Protocol::UDP, 53)] {
                        let pkt = PacketHeader {
                            src: src.parse().unwrap(),
                            dst: dst.parse().unwrap(),
                            protocol,
                            src_port: 40000,
                            dst_port,
                            tcp_flags: if protocol == Protocol::TCP { tcp_flags::SYN } else { 0 },
                            icmp_type: 0,
                            icmp_code: 0,
                            icmp_id: 0,
                        };
                        let key = calxdp_policy::compile::flow_key(&pkt);
                        // The rule by owner and index: a spliced program numbers its rules otherwise.
                        let rule = |r: u32| program.rule(r).map(|o| format!("{:?} #{}", o.owner, o.index));
                        ends.push(match program.evaluate(&key, |_| {}) {
                            calxdp_policy::walk_end::WalkEnd::Allow(r) => format!("allow {:?}", rule(r)),
                            calxdp_policy::walk_end::WalkEnd::Deny(r) => format!("deny {:?}", rule(r)),
                            other => format!("{other:?}"),
                        });
                    }
                }
            }
        }
        out.push((w.name.clone(), ends));
    }
    out
}

/// An endpoint that comes, changes or goes under tier lists other endpoints carry is patched into the
/// tables in force (no lowering, no resolving), with the IP set deltas Felix sends beside it, and decides
/// as the whole model published afresh; one that brings a list no endpoint carried, or takes the last
/// endpoint off one, publishes the whole model.
#[test]
fn endpoints_under_lists_others_carry_are_patched_in() {
    use super::driver::Publication;
    use crate::publisher::TablePublisher;
    let shared = || vec![tier("t", "Deny", &[("p", "GlobalNetworkPolicy")])];
    let allow_from = |set: &str| proto::Rule {
        action: "allow".into(),
        protocol: named("tcp"),
        src_ip_set_ids: vec![set.into()],
        ..Default::default()
    };
    let mut s = Stream::new();
    s.set("s:pods", IpSetType::Net, &["10.9.9.1/32", "10.9.9.2/32"])
        .profile("kns.app", "allow")
        .policy("p", "GlobalNetworkPolicy", "t", vec![allow_from("s:pods")])
        .policy("q", "GlobalNetworkPolicy", "t", vec![])
        .workload("a", "cali1", "10.9.9.1", shared())
        .workload("b", "cali2", "10.9.9.2", shared());
    s.push(Payload::InSync(proto::InSync {}));
    let mut front = feed(&s).unwrap();
    let (node, resources) = front.model().unwrap();
    let mut publisher = TablePublisher::new(node, resources);
    front.published_whole();
    let addresses = ["10.9.9.1", "10.9.9.2", "10.9.9.3", "10.7.0.1"];
    let delta = |added: &[&str], removed: &[&str]| {
        Payload::IpsetDeltaUpdate(proto::IpSetDeltaUpdate {
            id: "s:pods".into(),
            added_members: added.iter().map(|m| m.to_string()).collect(),
            removed_members: removed.iter().map(|m| m.to_string()).collect(),
        })
    };
    let feed_more = |front: &mut FrontEnd, from: usize, s: &Stream| {
        let mut bytes = Vec::new();
        for m in &s.0[from..] {
            write_frame(&mut bytes, m).unwrap();
        }
        read_all(front, &mut &bytes[..], None).unwrap();
    };
    // Each step: the messages, and whether they are a patch.
    type Step = Box<dyn Fn(&mut Stream)>;
    let steps: Vec<(Step, bool)> = vec![
        // A pod like a and b: its endpoint, and its address into the set.
        (
            Box::new(move |s: &mut Stream| {
                s.workload("c", "cali3", "10.9.9.3", shared()).push(delta(&["10.9.9.3/32"], &[]));
            }),
            true,
        ),
        // a leaves: its endpoint and its address.
        (
            Box::new(move |s: &mut Stream| {
                s.push(Payload::WorkloadEndpointRemove(proto::WorkloadEndpointRemove { id: Some(wid("a")) }))
                    .push(delta(&[], &["10.9.9.1/32"]));
            }),
            true,
        ),
        // b gets another address (the old one's flows are flushed).
        (
            Box::new(move |s: &mut Stream| {
                s.workload("b", "cali2", "10.7.0.1", shared());
            }),
            true,
        ),
        // p's rules change (b and c walk it): a patch of the policy alone.
        (
            Box::new(move |s: &mut Stream| {
                let deny_ssh = proto::Rule {
                    action: "deny".into(),
                    protocol: named("tcp"),
                    dst_ports: vec![proto::PortRange { first: 22, last: 22 }],
                    ..Default::default()
                };
                s.policy("p", "GlobalNetworkPolicy", "t", vec![deny_ssh, allow_from("s:pods")]);
            }),
            true,
        ),
        // q, which no endpoint lists, gets a rule: a patch that splices nothing.
        (
            Box::new(move |s: &mut Stream| {
                s.policy("q", "GlobalNetworkPolicy", "t", vec![allow_from("s:pods")]);
            }),
            true,
        ),
        // p moves to another tier: more than its rules.
        (
            Box::new(move |s: &mut Stream| {
                s.policy("p", "GlobalNetworkPolicy", "u", vec![allow_from("s:pods")]);
            }),
            false,
        ),
        // c moves to a list no endpoint carried: the policies' selectors change.
        (
            Box::new(move |s: &mut Stream| {
                s.workload("c", "cali3", "10.9.9.3", vec![tier("t", "Deny", &[("q", "GlobalNetworkPolicy")])]);
            }),
            false,
        ),
    ];
    for (i, (step, patch)) in steps.into_iter().enumerate() {
        let from = s.0.len();
        step(&mut s);
        feed_more(&mut front, from, &s);
        match front.publication().unwrap() {
            Publication::Patch(p) => {
                assert!(patch, "step {i} is not a patch");
                assert_eq!(p.workloads.is_some(), i < 3, "step {i}: whether the workloads changed");
                assert_eq!(p.policies.len(), usize::from((3..5).contains(&i)), "step {i}: the policies changed");
                let flushed = publisher.patch(p).unwrap().expect("a patch").1;
                if i == 2 {
                    assert_eq!(flushed, vec!["10.9.9.2".parse::<IpAddr>().unwrap()], "b's old address");
                }
            }
            Publication::Model(node, resources) => {
                assert!(!patch, "step {i} is a patch");
                publisher.set_model(node, resources).unwrap();
            }
        }
        let (node, resources) = front.model().unwrap();
        let fresh = TablePublisher::new(node, resources);
        assert_eq!(decisions(&publisher, &addresses), decisions(&fresh, &addresses), "step {i}");
    }
}
