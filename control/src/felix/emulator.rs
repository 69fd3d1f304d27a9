//! The Felix side of the pipe, for tests and `calxdp parity --level felix`: a scenario's resources and node
//! → the messages Felix's calculation graph would send (notes/felix-protocol.md §6).
//!
//! [`FelixView::compute`] is the calc graph: it resolves the resources with calxdp's own resolver, finds the
//! local endpoints, the policies (staged ones included) that select each of them tier by tier, the profiles
//! they list (Kubernetes namespaces and service accounts as `kns.`/`ksa.` profiles), and turns every rule's
//! selectors, named ports and services into IP sets with Felix-shaped ids (`s:`, `n:`, `svc:`,
//! `svcnoport:` + SHA-224) whose members are computed over every entity in the cluster.
//! [`Emulator::update`] is the event sequencer: it diffs the new view against what it sent and emits the
//! difference in Felix's flush order, with `ConfigUpdate` first and `InSync` after the first flush.
//!
//! Where calxdp's resource model and Felix's calc graph differ in form but not in meaning, the emulator
//! follows the resource model: a side's selector and not-selector stay two sets (Felix folds them into one
//! `sel && !notSel` set), and rule ids hash prost's encoding of the rule (Felix hashes Go's).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sha2::{Digest, Sha224};

use calxdp_policy::net::IpNet;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::{Direction, Endpoint, ResolvedNode, Stage};
use calxdp_policy::resource::{
    Action, EntityRule, Policy, Port, Profile, Protocol, ResourceSet, Rule, Tier, TierDefault,
};
use calxdp_policy::selector::Selector;

use super::config::to_strings;
use super::proto::{self, ip_set_update::IpSetType, to_dataplane::Payload, ToDataplane};
use super::state::{PolicyKey, WorkloadKey};
use crate::render::hash::{base64_url, unique_id};

/// An IP set as Felix would send it.
#[derive(Clone, Debug, PartialEq)]
pub struct SetView {
    pub kind: IpSetType,
    pub members: BTreeSet<String>,
}

/// Everything Felix would have told the driver for one state of the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FelixView {
    pub config: BTreeMap<String, String>,
    pub ip_sets: BTreeMap<String, SetView>,
    pub policies: BTreeMap<PolicyKey, proto::Policy>,
    pub profiles: BTreeMap<String, proto::Profile>,
    pub workloads: BTreeMap<WorkloadKey, proto::WorkloadEndpoint>,
    pub host_endpoints: BTreeMap<String, proto::HostEndpoint>,
}

fn proto_word(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "tcp",
        Protocol::UDP => "udp",
        Protocol::SCTP => "sctp",
        _ => "any",
    }
}

fn net_members(n: &IpNet, out: &mut BTreeSet<String>) {
    // Felix splits a /0 into two halves (`extractCIDRsFromNetworkSet`).
    if n.prefix_len() == 0 {
        let halves: [&str; 2] = if n.addr().is_ipv4() { ["0.0.0.0/1", "128.0.0.0/1"] } else { ["::/1", "8000::/1"] };
        out.extend(halves.iter().map(|h| h.to_string()));
    } else {
        out.insert(n.to_string());
    }
}

/// One side of a rule in Felix's terms: the sets and port ranges it must (not) match.
struct SideSets {
    set_ids: Vec<String>,
    ranges: Vec<proto::PortRange>,
    named: Vec<String>,
    not_set_ids: Vec<String>,
    not_ranges: Vec<proto::PortRange>,
    not_named: Vec<String>,
    /// Service (IP, port) sets (destination only).
    port_sets: Vec<String>,
}

/// The IP sets the active rules use, computed over every entity (rule_scanner.go, named_port_index.go).
struct Sets<'w> {
    world: &'w ResolvedNode,
    sets: BTreeMap<String, SetView>,
}

impl<'w> Sets<'w> {
    fn selector(&mut self, sel: &Selector) -> String {
        let id = unique_id("s", &sel.to_string());
        if !self.sets.contains_key(&id) {
            let mut members = BTreeSet::new();
            for e in self.world.entities.iter().filter(|e| sel.matches(&e.labels)) {
                for n in &e.nets {
                    net_members(n, &mut members);
                }
            }
            self.sets.insert(id.clone(), SetView { kind: IpSetType::Net, members });
        }
        id
    }

    fn named_port(&mut self, sel: Option<&Selector>, rule_protocol: Option<Protocol>, port: &str) -> String {
        let all = Selector::all();
        let sel = sel.unwrap_or(&all);
        let proto = match rule_protocol {
            None => "any",
            Some(Protocol::UDP) => "udp",
            Some(Protocol::SCTP) => "sctp",
            Some(_) => "tcp",
        };
        let sel_id = unique_id("s", &sel.to_string());
        let id = unique_id("n", &format!("{sel_id},{proto},{port}"));
        if !self.sets.contains_key(&id) {
            let mut members = BTreeSet::new();
            for e in self.world.entities.iter().filter(|e| sel.matches(&e.labels)) {
                for np in e.ports.iter().filter(|np| np.name == port) {
                    if rule_protocol.is_some_and(|p| p != np.protocol) || proto_word(np.protocol) == "any" {
                        continue;
                    }
                    for n in &e.nets {
                        members.insert(format!("{},{}:{}", n.addr(), proto_word(np.protocol), np.port));
                    }
                }
            }
            self.sets.insert(id.clone(), SetView { kind: IpSetType::IpAndPort, members });
        }
        id
    }

    fn service(&mut self, namespace: &str, name: &str, with_ports: bool) -> String {
        let id = unique_id(if with_ports { "svc" } else { "svcnoport" }, &format!("{namespace}/{name}"));
        if !self.sets.contains_key(&id) {
            let mut members = BTreeSet::new();
            for s in self.world.node.services.iter().filter(|s| s.name == name && s.namespace == namespace) {
                for b in &s.backends {
                    if with_ports {
                        members.insert(format!("{},{}:{}", b.ip(), proto_word(s.protocol), b.port()));
                    } else {
                        members.insert(IpNet::host(b.ip()).to_string());
                    }
                }
            }
            let kind = if with_ports { IpSetType::IpAndPort } else { IpSetType::Net };
            self.sets.insert(id.clone(), SetView { kind, members });
        }
        id
    }

    fn protocol(p: Option<Protocol>) -> Option<proto::Protocol> {
        use proto::protocol::NumberOrName;
        p.map(|p| proto::Protocol {
            number_or_name: Some(match p {
                Protocol::TCP => NumberOrName::Name("tcp".into()),
                Protocol::UDP => NumberOrName::Name("udp".into()),
                Protocol::ICMP => NumberOrName::Name("icmp".into()),
                Protocol::ICMPV6 => NumberOrName::Name("icmpv6".into()),
                Protocol::SCTP => NumberOrName::Name("sctp".into()),
                Protocol::UDPLITE => NumberOrName::Name("udplite".into()),
                Protocol(n) => NumberOrName::Number(n as i32),
            }),
        })
    }

    /// One side of a rule, as `ruleToParsedRule` splits it.
    fn side(&mut self, side: &EntityRule, protocol: Option<Protocol>, is_src: bool) -> SideSets {
        let split = |ports: &[Port]| -> (Vec<proto::PortRange>, Vec<String>) {
            let mut ranges = Vec::new();
            let mut names = Vec::new();
            for p in ports {
                match p {
                    Port::Range(lo, hi) => ranges.push(proto::PortRange { first: *lo as i32, last: *hi as i32 }),
                    Port::Named(n) => names.push(n.clone()),
                }
            }
            (ranges, names)
        };
        let (ranges, names) = split(&side.ports);
        let (not_ranges, not_names) = split(&side.not_ports);
        let positive = side.selector.as_ref();
        let named: Vec<String> = names.iter().map(|n| self.named_port(positive, protocol, n)).collect();
        let not_named: Vec<String> = not_names.iter().map(|n| self.named_port(positive, protocol, n)).collect();
        let mut set_ids = Vec::new();
        // The selector's own set only when numeric ports or no named ports need it: named-port sets already
        // carry the selector.
        if let Some(sel) = positive {
            if !ranges.is_empty() || names.is_empty() {
                set_ids.push(self.selector(sel));
            }
        }
        let mut not_set_ids = Vec::new();
        if let Some(neg) = &side.not_selector {
            not_set_ids.push(self.selector(neg));
        }
        let mut port_sets = Vec::new();
        if let Some(svc) = &side.services {
            if is_src {
                set_ids.push(self.service(&svc.namespace, &svc.name, false));
            } else {
                port_sets.push(self.service(&svc.namespace, &svc.name, true));
            }
        }
        SideSets { set_ids, ranges, named, not_set_ids, not_ranges, not_named, port_sets }
    }

    fn rule(&mut self, r: &Rule) -> proto::Rule {
        use proto::rule::{Icmp, NotIcmp};
        let action = match r.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "log",
            Action::Pass => "next-tier",
        };
        let src = self.side(&r.source, r.protocol, true);
        let dst = self.side(&r.destination, r.protocol, false);
        let icmp = |m: Option<calxdp_policy::resource::IcmpMatch>| {
            m.map(|m| match m.code {
                None => (Some(m.icmp_type as i32), None),
                Some(c) => (None, Some(proto::IcmpTypeAndCode { r#type: m.icmp_type as i32, code: c as i32 })),
            })
        };
        let nets = |l: &[IpNet]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        proto::Rule {
            action: action.into(),
            ip_version: match r.ip_version {
                None => 0,
                Some(calxdp_policy::net::IpFamily::V4) => 4,
                Some(calxdp_policy::net::IpFamily::V6) => 6,
            },
            protocol: Self::protocol(r.protocol),
            src_net: nets(&r.source.nets),
            src_ports: src.ranges,
            dst_net: nets(&r.destination.nets),
            dst_ports: dst.ranges,
            icmp: match icmp(r.icmp) {
                Some((Some(t), _)) => Some(Icmp::IcmpType(t)),
                Some((None, Some(tc))) => Some(Icmp::IcmpTypeCode(tc)),
                _ => None,
            },
            src_ip_set_ids: src.set_ids,
            dst_ip_set_ids: dst.set_ids,
            src_named_port_ip_set_ids: src.named,
            dst_named_port_ip_set_ids: dst.named,
            dst_ip_port_set_ids: dst.port_sets,
            not_protocol: Self::protocol(r.not_protocol),
            not_src_net: nets(&r.source.not_nets),
            not_src_ports: src.not_ranges,
            not_dst_net: nets(&r.destination.not_nets),
            not_dst_ports: dst.not_ranges,
            not_icmp: match icmp(r.not_icmp) {
                Some((Some(t), _)) => Some(NotIcmp::NotIcmpType(t)),
                Some((None, Some(tc))) => Some(NotIcmp::NotIcmpTypeCode(tc)),
                _ => None,
            },
            not_src_ip_set_ids: src.not_set_ids,
            not_dst_ip_set_ids: dst.not_set_ids,
            not_src_named_port_ip_set_ids: src.not_named,
            not_dst_named_port_ip_set_ids: dst.not_named,
            rule_id: String::new(),
        }
    }

    /// A rule list with Felix's chained rule ids (`fillInRuleIDs`).
    fn rules(&mut self, rules: &[Rule], seed: &str) -> Vec<proto::Rule> {
        let mut h = Sha224::digest(seed.as_bytes()).to_vec();
        rules
            .iter()
            .map(|r| {
                let mut p = self.rule(r);
                let mut hasher = Sha224::new();
                hasher.update(&h);
                hasher.update(p.encode_to_vec());
                h = hasher.finalize().to_vec();
                p.rule_id = base64_url(&h)[..16].to_string();
                p
            })
            .collect()
    }
}

fn policy_key(p: &Policy) -> PolicyKey {
    PolicyKey {
        kind: p.id.kind.name().to_string(),
        namespace: p.id.namespace.clone().unwrap_or_default(),
        name: p.id.name.clone(),
    }
}

fn policy_id(p: &Policy) -> proto::PolicyId {
    let k = policy_key(p);
    proto::PolicyId { name: k.name, namespace: k.namespace, kind: k.kind }
}

/// A profile Felix sends for a name no Profile resource has (`DummyDropRules`).
fn missing_profile(name: &str) -> Profile {
    Profile {
        name: name.to_string(),
        ingress: vec![Rule::new(Action::Deny)],
        egress: vec![Rule::new(Action::Deny)],
        labels_to_apply: Default::default(),
    }
}

impl FelixView {
    /// What Felix on `node` would send with `resources` in the datastore.
    pub fn compute(node: &NodeConfig, resources: &ResourceSet) -> Result<FelixView, super::config::NoConfigForm> {
        let world = ResolvedNode::new(node, resources);
        // Every policy, staged ones included, in Felix's order (semantics §4.1); tiers in the resolver's
        // order, then tiers only staged policies name.
        let mut all: Vec<&Policy> = resources.policies().map(|p| &**p).collect();
        all.sort_by(|a, b| {
            a.order
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.order.unwrap_or(f64::INFINITY))
                .then_with(|| tiebreak(a).cmp(&tiebreak(b)))
        });
        let mut tiers: Vec<(String, Option<TierDefault>)> = Vec::new();
        let known: BTreeSet<String> =
            resources.tiers().map(|t| t.name.clone()).chain(Tier::builtin().into_iter().map(|t| t.name)).collect();
        for t in world.tiers.iter() {
            tiers.push((t.name.clone(), known.contains(&t.name).then_some(t.default_action)));
        }
        let mut staged_only: Vec<String> =
            all.iter().filter(|p| !tiers.iter().any(|t| t.0 == p.tier)).map(|p| p.tier.clone()).collect();
        staged_only.sort();
        staged_only.dedup();
        tiers.extend(staged_only.into_iter().map(|t| (t, None)));

        let tier_infos = |ep: &Endpoint, stage: Stage| -> Vec<proto::TierInfo> {
            let mut out = Vec::new();
            for (tier, default) in &tiers {
                let selecting: Vec<&Policy> = all
                    .iter()
                    .copied()
                    .filter(|p| &p.tier == tier && stage.holds(p) && p.selector.matches(&ep.labels))
                    .collect();
                let list = |d: Direction| -> Vec<proto::PolicyId> {
                    selecting.iter().filter(|p| p.applies(d)).map(|p| policy_id(p)).collect()
                };
                let ingress = list(Direction::Ingress);
                // preDNAT policies are ingress-only (tierInfoToProtoTierInfo).
                let egress = if stage == Stage::PreDnat { Vec::new() } else { list(Direction::Egress) };
                if ingress.is_empty() && egress.is_empty() {
                    continue;
                }
                let default_action = match (stage.forces_pass(), default) {
                    (true, _) => "Pass",
                    (false, Some(TierDefault::Pass)) => "Pass",
                    (false, Some(TierDefault::Deny)) => "Deny",
                    (false, None) => "",
                };
                out.push(proto::TierInfo {
                    name: tier.clone(),
                    ingress_policies: ingress,
                    egress_policies: egress,
                    default_action: default_action.into(),
                });
            }
            out
        };

        let mut view = FelixView { config: to_strings(&world.node.felix)?, ..FelixView::default() };
        let mut profile_names: BTreeSet<String> = BTreeSet::new();
        for (w, ep) in world.node.workloads.iter().zip(world.workloads.iter()) {
            let Some(iface) = &w.interface else { continue };
            let key = WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("{}/{}", w.namespace, w.name),
                endpoint: "eth0".into(),
            };
            let (v4, v6): (Vec<&std::net::IpAddr>, Vec<&std::net::IpAddr>) = w.ips.iter().partition(|ip| ip.is_ipv4());
            profile_names.extend(ep.profiles.iter().cloned());
            view.workloads.insert(
                key,
                proto::WorkloadEndpoint {
                    state: "active".into(),
                    name: iface.clone(),
                    mac: w
                        .mac
                        .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
                        .unwrap_or_default(),
                    profile_ids: ep.profiles.clone(),
                    ipv4_nets: v4.iter().map(|ip| IpNet::host(**ip).to_string()).collect(),
                    ipv6_nets: v6.iter().map(|ip| IpNet::host(**ip).to_string()).collect(),
                    tiers: tier_infos(ep, Stage::Normal),
                    allow_spoofed_source_prefixes: Vec::new(),
                    annotations: Default::default(),
                },
            );
        }
        for h in &world.host_endpoints {
            let (v4, v6): (Vec<&std::net::IpAddr>, Vec<&std::net::IpAddr>) =
                h.hep.expected_ips.iter().partition(|ip| ip.is_ipv4());
            profile_names.extend(h.endpoint.profiles.iter().cloned());
            view.host_endpoints.insert(
                h.hep.name.clone(),
                proto::HostEndpoint {
                    name: h.hep.interface_name.clone().unwrap_or_default(),
                    profile_ids: h.endpoint.profiles.clone(),
                    tiers: tier_infos(&h.endpoint, Stage::Normal),
                    expected_ipv4_addrs: v4.iter().map(|ip| ip.to_string()).collect(),
                    expected_ipv6_addrs: v6.iter().map(|ip| ip.to_string()).collect(),
                    untracked_tiers: tier_infos(&h.endpoint, Stage::Untracked),
                    pre_dnat_tiers: tier_infos(&h.endpoint, Stage::PreDnat),
                    forward_tiers: tier_infos(&h.endpoint, Stage::Forward),
                },
            );
        }

        // Active policies: those some local endpoint's tiers name.
        let mut active: BTreeSet<PolicyKey> = BTreeSet::new();
        let mut note = |tiers: &[proto::TierInfo]| {
            for t in tiers {
                for id in t.ingress_policies.iter().chain(&t.egress_policies) {
                    active.insert(PolicyKey::from_proto(id));
                }
            }
        };
        for ep in view.workloads.values() {
            note(&ep.tiers);
        }
        for ep in view.host_endpoints.values() {
            for l in super::state::hep_tier_lists(ep) {
                note(l);
            }
        }
        let mut sets = Sets { world: &world, sets: BTreeMap::new() };
        for p in &all {
            let key = policy_key(p);
            if !active.contains(&key) {
                continue;
            }
            let policy = proto::Policy {
                inbound_rules: sets.rules(&p.ingress, &format!("pol-in-default/{}", key.name)),
                outbound_rules: sets.rules(&p.egress, &format!("pol-out-default/{}", key.name)),
                untracked: p.do_not_track,
                pre_dnat: p.pre_dnat,
                namespace: key.namespace.clone(),
                original_selector: p.selector.to_string(),
                perf_hints: Vec::new(),
                tier: p.tier.clone(),
            };
            view.policies.insert(key, policy);
        }
        for name in profile_names {
            let missing;
            let profile = match world.profiles.get(&name) {
                Some(p) => p,
                None => {
                    missing = missing_profile(&name);
                    &missing
                }
            };
            let p = proto::Profile {
                inbound_rules: sets.rules(&profile.ingress, &format!("prof-in-{name}")),
                outbound_rules: sets.rules(&profile.egress, &format!("prof-out-{name}")),
            };
            view.profiles.insert(name, p);
        }
        view.ip_sets = sets.sets;
        Ok(view)
    }
}

fn tiebreak(p: &Policy) -> String {
    format!("{}/{}/{}", p.id.name, p.id.namespace.as_deref().unwrap_or(""), p.id.kind.name())
}

/// Felix's event sequencer towards one driver: what it sent, and the sequence numbers.
#[derive(Debug, Default)]
pub struct Emulator {
    sent: Option<FelixView>,
    seq: u64,
    /// Updates since the start, to vary the form of IP set changes.
    flushes: u64,
}

impl Emulator {
    pub fn new() -> Emulator {
        Emulator::default()
    }

    fn wrap(&mut self, p: Payload) -> ToDataplane {
        let m = ToDataplane { sequence_number: self.seq, payload: Some(p) };
        self.seq += 1;
        m
    }

    /// Whether going to `next` changes configuration Felix restarts for (anything but the four keys it
    /// forwards, `DataplaneConnector.handleConfigUpdate`): then the caller starts a new driver session.
    pub fn needs_restart(&self, next: &FelixView) -> bool {
        self.sent.as_ref().is_some_and(|s| s.config != next.config)
    }

    /// The messages that take the driver from what was sent to `next`, in Felix's flush order. The first
    /// call sends `ConfigUpdate`, the snapshot and `InSync`.
    pub fn update(&mut self, next: FelixView) -> Vec<ToDataplane> {
        use proto::*;
        let first = self.sent.is_none();
        let prev = self.sent.take().unwrap_or_default();
        let mut out = Vec::new();
        if first {
            let c = ConfigUpdate { config: next.config.clone().into_iter().collect() };
            out.push(self.wrap(Payload::ConfigUpdate(c)));
        }
        self.flushes += 1;
        let mut deltas = Vec::new();
        for (id, set) in &next.ip_sets {
            match prev.ip_sets.get(id) {
                None => out.push(self.wrap(Payload::IpsetUpdate(IpSetUpdate {
                    id: id.clone(),
                    members: set.members.iter().cloned().collect(),
                    r#type: set.kind as i32,
                }))),
                Some(old) if old == set => {}
                Some(old) => {
                    let added: Vec<String> = set.members.difference(&old.members).cloned().collect();
                    let removed: Vec<String> = old.members.difference(&set.members).cloned().collect();
                    // Felix resends a set in full when it went inactive and active again within a flush; do
                    // it every other change so both forms are exercised.
                    if old.kind != set.kind || self.flushes % 2 == 0 {
                        out.push(self.wrap(Payload::IpsetUpdate(IpSetUpdate {
                            id: id.clone(),
                            members: set.members.iter().cloned().collect(),
                            r#type: set.kind as i32,
                        })));
                    } else {
                        deltas.push(IpSetDeltaUpdate {
                            id: id.clone(),
                            added_members: added,
                            removed_members: removed,
                        });
                    }
                }
            }
        }
        for d in deltas {
            out.push(self.wrap(Payload::IpsetDeltaUpdate(d)));
        }
        for (k, p) in &next.policies {
            if prev.policies.get(k) != Some(p) {
                let id = PolicyId { name: k.name.clone(), namespace: k.namespace.clone(), kind: k.kind.clone() };
                out.push(
                    self.wrap(Payload::ActivePolicyUpdate(ActivePolicyUpdate {
                        id: Some(id),
                        policy: Some(p.clone()),
                    })),
                );
            }
        }
        for (name, p) in &next.profiles {
            if prev.profiles.get(name) != Some(p) {
                out.push(self.wrap(Payload::ActiveProfileUpdate(ActiveProfileUpdate {
                    id: Some(ProfileId { name: name.clone() }),
                    profile: Some(p.clone()),
                })));
            }
        }
        for (k, ep) in &next.workloads {
            if prev.workloads.get(k) != Some(ep) {
                out.push(self.wrap(Payload::WorkloadEndpointUpdate(WorkloadEndpointUpdate {
                    id: Some(k.to_proto()),
                    endpoint: Some(ep.clone()),
                })));
            }
        }
        for (k, ep) in &next.host_endpoints {
            if prev.host_endpoints.get(k) != Some(ep) {
                out.push(self.wrap(Payload::HostEndpointUpdate(HostEndpointUpdate {
                    id: Some(HostEndpointId { endpoint_id: k.clone() }),
                    endpoint: Some(ep.clone()),
                })));
            }
        }
        for k in prev.workloads.keys().filter(|k| !next.workloads.contains_key(*k)) {
            out.push(self.wrap(Payload::WorkloadEndpointRemove(WorkloadEndpointRemove { id: Some(k.to_proto()) })));
        }
        for k in prev.host_endpoints.keys().filter(|k| !next.host_endpoints.contains_key(*k)) {
            out.push(self.wrap(Payload::HostEndpointRemove(HostEndpointRemove {
                id: Some(HostEndpointId { endpoint_id: k.clone() }),
            })));
        }
        for k in prev.profiles.keys().filter(|k| !next.profiles.contains_key(*k)) {
            out.push(
                self.wrap(Payload::ActiveProfileRemove(ActiveProfileRemove {
                    id: Some(ProfileId { name: k.clone() }),
                })),
            );
        }
        for k in prev.policies.keys().filter(|k| !next.policies.contains_key(*k)) {
            let id = PolicyId { name: k.name.clone(), namespace: k.namespace.clone(), kind: k.kind.clone() };
            out.push(self.wrap(Payload::ActivePolicyRemove(ActivePolicyRemove { id: Some(id) })));
        }
        for k in prev.ip_sets.keys().filter(|k| !next.ip_sets.contains_key(*k)) {
            out.push(self.wrap(Payload::IpsetRemove(IpSetRemove { id: k.clone() })));
        }
        if first {
            out.push(self.wrap(Payload::InSync(InSync {})));
        }
        self.sent = Some(next);
        out
    }
}
