//! Felix's model → the model calxdp's compiler consumes (docs/felix-driver.md "The model").
//!
//! Felix sends policies already resolved: a rule names IP sets by id, and an endpoint names its policies,
//! tier by tier, instead of policies selecting endpoints. The compiler resolves selectors over *entities*
//! (labelled things with addresses and named ports) and sorts policies by tier and order. This module
//! expresses the one in the other, exactly:
//!
//! - every IP set id becomes a label `felixset/<id>`; a rule's `src_ip_set_ids [A, B]` becomes the selector
//!   `has(felixset/A) && has(felixset/B)`, its `not_src_ip_set_ids` the not-selector `has(A) || has(B)`,
//!   its named-port set ids named ports called `felixset/<id>`;
//! - every distinct member prefix becomes one entity carrying the label of each set that *contains* it (a
//!   member of the set equal to it or wider), and every `IP_AND_PORT` member address one entity declaring
//!   the named ports; an address is in `A && B` exactly when one of these prefixes lies in both, so set
//!   intersection and named ports filtered by a set come out as Felix means them;
//! - endpoints whose tier lists are equal carry one label `felixlists/<hash of the lists>`, and every policy
//!   selects `has(L1) || has(L2) || ...` over the lists that name it (a policy no list names selects
//!   nothing); its order and its tier's order are ranks consistent with every endpoint's lists. One label per
//!   endpoint, not one per policy in its lists: a thousand endpoints under seven hundred policies each would
//!   otherwise carry 700 000 labels through every compile.
//!
//! Unchanged sets, policies and endpoints lower to identical resources, and an unchanged policy to the same
//! `Arc` ([`PolicyCache`]), so the compiler's caches keep every program a change does not touch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use calxdp_policy::net::{IpFamily, IpNet};
use calxdp_policy::node::{parse_mac, FelixConfig, NodeConfig, Workload};
use calxdp_policy::resolve::Entity;
use calxdp_policy::resource::{
    Action, EntityRule, HostEndpoint, IcmpMatch, NamedPort, NetworkSet, Policy, PolicyId, PolicyKind, Port, Profile,
    Protocol, Resource, ResourceSet, Rule, Tier, TierDefault,
};
use calxdp_policy::selector::{Expr, Selector};

use super::proto;
use super::state::{hep_tier_lists, FelixState, Member, PolicyKey, WorkloadKey};

/// The label an IP set's members carry.
pub fn set_label(id: &str) -> String {
    format!("felixset/{id}")
}

/// The label an endpoint carries for each policy in its tiers.
pub fn policy_label(key: &PolicyKey) -> String {
    format!("felixpolicy/{}/{}/{}", key.kind, key.namespace, key.name)
}

/// The namespace the entities standing for `IP_AND_PORT` members are put in (no endpoint refers to it).
pub const SET_MEMBER_NAMESPACE: &str = "calxdp-felix-sets";

/// A converted rule and the IP sets it refers to.
#[derive(Debug)]
pub struct RuleSets {
    pub rule: Rule,
    pub sets: Vec<String>,
}

/// `has(l1) && has(l2) && …` (`all`) or `has(l1) || has(l2) || …` over `labels`; `None` for no labels.
fn has_labels(labels: impl IntoIterator<Item = String>, all: bool) -> Option<Selector> {
    let mut exprs: Vec<Expr> = labels.into_iter().map(Expr::Has).collect();
    match exprs.len() {
        0 => None,
        1 => exprs.pop().map(Selector::from_expr),
        _ => Some(Selector::from_expr(if all { Expr::And(exprs) } else { Expr::Or(exprs) })),
    }
}

fn has_all(ids: &[String]) -> Option<Selector> {
    has_labels(ids.iter().map(|id| set_label(id)), true)
}

fn has_any(ids: &[String]) -> Option<Selector> {
    has_labels(ids.iter().map(|id| set_label(id)), false)
}

fn nets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter().map(|n| n.parse::<IpNet>().map_err(|e| e.0)).collect()
}

fn ports(ranges: &[proto::PortRange], named: &[String]) -> Result<Vec<Port>, String> {
    let mut out = Vec::new();
    for r in ranges {
        let ok = (0..=65535).contains(&r.first) && (0..=65535).contains(&r.last) && r.first <= r.last;
        if !ok {
            return Err(format!("port range {}:{} is not within 0-65535", r.first, r.last));
        }
        out.push(Port::Range(r.first as u16, r.last as u16));
    }
    out.extend(named.iter().map(|id| Port::Named(set_label(id))));
    Ok(out)
}

fn protocol(p: &Option<proto::Protocol>) -> Result<Option<Protocol>, String> {
    use proto::protocol::NumberOrName;
    match p.as_ref().and_then(|p| p.number_or_name.as_ref()) {
        None => Ok(None),
        Some(NumberOrName::Number(n)) => match u8::try_from(*n) {
            Ok(v) if v >= 1 => Ok(Some(Protocol(v))),
            _ => Err(format!("protocol number {n} is not 1-255")),
        },
        Some(NumberOrName::Name(name)) => {
            Protocol::parse(name).map(Some).ok_or_else(|| format!("unknown protocol name '{name}'"))
        }
    }
}

fn icmp_match(t: Option<i32>, tc: Option<&proto::IcmpTypeAndCode>) -> Result<Option<IcmpMatch>, String> {
    let byte = |v: i32, what: &str| u8::try_from(v).map_err(|_| format!("ICMP {what} {v} is not 0-255"));
    Ok(match (t, tc) {
        (Some(t), _) => Some(IcmpMatch { icmp_type: byte(t, "type")?, code: None }),
        (None, Some(tc)) => Some(IcmpMatch { icmp_type: byte(tc.r#type, "type")?, code: Some(byte(tc.code, "code")?) }),
        (None, None) => None,
    })
}

/// One of Felix's rules as a calxdp rule (matching semantics: notes/felix-protocol.md §3.9).
pub fn rule_from_proto(r: &proto::Rule) -> Result<RuleSets, String> {
    use proto::rule::{Icmp, NotIcmp};
    let action = match r.action.as_str() {
        "" | "allow" => Action::Allow,
        "deny" => Action::Deny,
        "log" => Action::Log,
        "next-tier" | "pass" => Action::Pass,
        other => return Err(format!("unknown action '{other}'")),
    };
    let ip_version = match r.ip_version {
        0 => None,
        4 => Some(IpFamily::V4),
        6 => Some(IpFamily::V6),
        v => return Err(format!("unknown ip_version {v}")),
    };
    let (icmp_t, icmp_tc) = match &r.icmp {
        Some(Icmp::IcmpType(t)) => (Some(*t), None),
        Some(Icmp::IcmpTypeCode(tc)) => (None, Some(tc)),
        None => (None, None),
    };
    let (not_t, not_tc) = match &r.not_icmp {
        Some(NotIcmp::NotIcmpType(t)) => (Some(*t), None),
        Some(NotIcmp::NotIcmpTypeCode(tc)) => (None, Some(tc)),
        None => (None, None),
    };
    let mut dst_ports = ports(&r.dst_ports, &r.dst_named_port_ip_set_ids)?;
    // A service's (IP, port) set must hold as well as everything else; calxdp expresses it as a named port
    // of the set's members, which is exact when the rule has no other destination ports (Felix never sends
    // both: a rule with `destination.services` has no `ports`).
    match r.dst_ip_port_set_ids.as_slice() {
        [] => {}
        [id] if dst_ports.is_empty() => dst_ports.push(Port::Named(set_label(id))),
        _ => return Err("service (IP, port) sets together with destination ports are not supported".into()),
    }
    let source = EntityRule {
        nets: nets(&r.src_net)?,
        not_nets: nets(&r.not_src_net)?,
        selector: has_all(&r.src_ip_set_ids),
        not_selector: has_any(&r.not_src_ip_set_ids),
        ports: ports(&r.src_ports, &r.src_named_port_ip_set_ids)?,
        not_ports: ports(&r.not_src_ports, &r.not_src_named_port_ip_set_ids)?,
        services: None,
    };
    let destination = EntityRule {
        nets: nets(&r.dst_net)?,
        not_nets: nets(&r.not_dst_net)?,
        selector: has_all(&r.dst_ip_set_ids),
        not_selector: has_any(&r.not_dst_ip_set_ids),
        ports: dst_ports,
        not_ports: ports(&r.not_dst_ports, &r.not_dst_named_port_ip_set_ids)?,
        services: None,
    };
    let rule = Rule {
        action,
        ip_version,
        protocol: protocol(&r.protocol)?,
        not_protocol: protocol(&r.not_protocol)?,
        icmp: icmp_match(icmp_t, icmp_tc)?,
        not_icmp: icmp_match(not_t, not_tc)?,
        source,
        destination,
    };
    let sets = [
        &r.src_ip_set_ids,
        &r.dst_ip_set_ids,
        &r.src_named_port_ip_set_ids,
        &r.dst_named_port_ip_set_ids,
        &r.dst_ip_port_set_ids,
        &r.not_src_ip_set_ids,
        &r.not_dst_ip_set_ids,
        &r.not_src_named_port_ip_set_ids,
        &r.not_dst_named_port_ip_set_ids,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    Ok(RuleSets { rule, sets })
}

/// The kind a `PolicyID.kind` names. Kinds this driver does not know are enforced like their non-staged
/// relatives unless their name says they are staged (Felix's `KindIsStaged` is a prefix test too).
pub fn policy_kind(key: &PolicyKey) -> PolicyKind {
    use PolicyKind::*;
    if let Some(k) = PolicyKind::ALL.into_iter().find(|k| k.name() == key.kind) {
        return k;
    }
    match (key.kind.starts_with("Staged"), key.namespace.is_empty()) {
        (true, true) => StagedGlobalNetworkPolicy,
        (true, false) => StagedNetworkPolicy,
        (false, true) => GlobalNetworkPolicy,
        (false, false) => NetworkPolicy,
    }
}

/// A topological order of everything the chains mention, each chain's order kept; ready items are taken in
/// key order, so the result is deterministic. Felix's lists are consistent; if some were not, the items
/// left in a cycle follow in key order.
fn merge_orders<K: Ord + Clone>(chains: &[Vec<K>]) -> Vec<K> {
    let mut nodes: BTreeSet<K> = BTreeSet::new();
    let mut edges: BTreeSet<(K, K)> = BTreeSet::new();
    for c in chains {
        nodes.extend(c.iter().cloned());
        for w in c.windows(2) {
            if w[0] != w[1] {
                edges.insert((w[0].clone(), w[1].clone()));
            }
        }
    }
    let mut indegree: BTreeMap<K, usize> = nodes.iter().map(|n| (n.clone(), 0)).collect();
    let mut next: BTreeMap<K, Vec<K>> = BTreeMap::new();
    for (a, b) in &edges {
        *indegree.get_mut(b).expect("node") += 1;
        next.entry(a.clone()).or_default().push(b.clone());
    }
    let mut ready: BTreeSet<K> = indegree.iter().filter(|(_, d)| **d == 0).map(|(k, _)| k.clone()).collect();
    let mut out = Vec::with_capacity(nodes.len());
    while let Some(k) = ready.pop_first() {
        for n in next.get(&k).into_iter().flatten() {
            let d = indegree.get_mut(n).expect("node");
            *d -= 1;
            if *d == 0 {
                ready.insert(n.clone());
            }
        }
        indegree.remove(&k);
        out.push(k);
    }
    out.extend(indegree.into_keys());
    out
}

/// Each list once.
fn distinct<K: Ord>(chains: Vec<Vec<K>>) -> Vec<Vec<K>> {
    chains.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// Orders for the tiers in `merged` that keep the built-in tiers' fixed orders and put every other tier
/// where the merged order says.
fn tier_orders(merged: &[String]) -> HashMap<String, f64> {
    let builtin: HashMap<String, f64> =
        Tier::builtin().into_iter().filter_map(|t| t.order.map(|o| (t.name, o))).collect();
    let mut out = HashMap::new();
    let mut i = 0;
    let mut lo: Option<f64> = None;
    while i < merged.len() {
        if let Some(&o) = builtin.get(&merged[i]) {
            out.insert(merged[i].clone(), o);
            lo = Some(o);
            i += 1;
            continue;
        }
        let start = i;
        while i < merged.len() && !builtin.contains_key(&merged[i]) {
            i += 1;
        }
        let run = (i - start) as f64;
        let hi = merged.get(i).and_then(|n| builtin.get(n)).copied();
        let (from, step) = match (lo, hi) {
            (Some(l), Some(h)) => (l, (h - l) / (run + 1.0)),
            (Some(l), None) => (l, 1.0),
            (None, Some(h)) => (h - run - 1.0, 1.0),
            (None, None) => (0.0, 1.0),
        };
        for (k, name) in merged[start..i].iter().enumerate() {
            out.insert(name.clone(), from + step * (k as f64 + 1.0));
        }
    }
    out
}

/// Identifies an endpoint's tier lists by content: endpoints with equal lists carry the same label, and a
/// policy selects the endpoints whose lists name it (see the module comment).
fn lists_label(lists: &[&[proto::TierInfo]]) -> String {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new()` has fixed keys: a label is the same in every compile and every run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lists.len().hash(&mut h);
    for list in lists {
        list.len().hash(&mut h);
        for t in list.iter() {
            (&t.name, &t.default_action).hash(&mut h);
            for ids in [&t.ingress_policies, &t.egress_policies] {
                ids.len().hash(&mut h);
                for id in ids {
                    (&id.kind, &id.namespace, &id.name).hash(&mut h);
                }
            }
        }
    }
    format!("felixlists/{:016x}", h.finish())
}

/// The labels an endpoint carries: the one of its tier lists.
fn endpoint_labels(lists: &[&[proto::TierInfo]]) -> BTreeMap<String, String> {
    BTreeMap::from([(lists_label(lists), String::new())])
}

fn addrs(v4: &[String], v6: &[String], what: &str) -> Result<Vec<IpAddr>, String> {
    v4.iter().chain(v6).map(|t| t.parse::<IpNet>().map(|n| n.addr()).map_err(|e| format!("{what}: {}", e.0))).collect()
}

/// A workload endpoint as a local pod of the node.
pub fn workload(key: &WorkloadKey, ep: &proto::WorkloadEndpoint) -> Result<Workload, String> {
    if ep.name.is_empty() {
        return Err(format!("workload endpoint {key} has no interface name"));
    }
    let (namespace, pod) = match key.workload.split_once('/') {
        Some((ns, pod)) => (ns.to_string(), pod.to_string()),
        None => (String::new(), key.workload.clone()),
    };
    let name = if key.endpoint.is_empty() || key.endpoint == "eth0" { pod } else { format!("{pod}.{}", key.endpoint) };
    let service_account = ep
        .profile_ids
        .iter()
        .find_map(|p| p.strip_prefix(&format!("ksa.{namespace}.")).map(str::to_string))
        .unwrap_or_else(|| "default".into());
    let mac = match ep.mac.as_str() {
        "" => None,
        m => Some(parse_mac(m).ok_or_else(|| format!("workload endpoint {key}: '{m}' is not a MAC address"))?),
    };
    Ok(Workload {
        name,
        namespace,
        interface: Some(ep.name.clone()),
        ips: addrs(&ep.ipv4_nets, &ep.ipv6_nets, &format!("workload endpoint {key}"))?,
        labels: endpoint_labels(&[&ep.tiers]),
        service_account,
        ports: Vec::new(),
        mac,
        profiles: Some(ep.profile_ids.clone()),
    })
}

/// A host endpoint of this node.
pub fn host_endpoint(node: &str, id: &str, ep: &proto::HostEndpoint) -> Result<HostEndpoint, String> {
    let expected_ips = ep
        .expected_ipv4_addrs
        .iter()
        .chain(&ep.expected_ipv6_addrs)
        .map(|a| a.parse::<IpAddr>().map_err(|_| format!("host endpoint {id}: '{a}' is not an address")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HostEndpoint {
        name: id.to_string(),
        node: node.to_string(),
        interface_name: if ep.name.is_empty() { None } else { Some(ep.name.clone()) },
        expected_ips,
        labels: endpoint_labels(&hep_tier_lists(ep)),
        profiles: ep.profile_ids.clone(),
        ports: Vec::new(),
    })
}

/// The entities standing for the IP sets' members (see the module comment).
fn set_entities(state: &FelixState) -> (Vec<NetworkSet>, Vec<Workload>) {
    let mut prefixes: BTreeMap<IpNet, BTreeSet<&str>> = BTreeMap::new();
    let mut tuples: BTreeMap<IpAddr, Vec<NamedPort>> = BTreeMap::new();
    for (id, set) in &state.ip_sets {
        for m in set.members.values() {
            match *m {
                Member::Net(n) => {
                    prefixes.entry(n).or_default().insert(id);
                }
                Member::IpPort(ip, protocol, port) => {
                    tuples.entry(ip).or_default().push(NamedPort { name: set_label(id), protocol, port });
                }
            }
        }
    }
    let containing = |n: IpNet| -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for len in 0..=n.prefix_len() {
            if let Some(ids) = IpNet::new(n.addr(), len).and_then(|wider| prefixes.get(&wider)) {
                labels.extend(ids.iter().map(|id| (set_label(id), String::new())));
            }
        }
        labels
    };
    let nets = prefixes
        .keys()
        .enumerate()
        .map(|(i, n)| NetworkSet {
            namespace: None,
            name: format!("felix-member-{i}"),
            labels: containing(*n),
            nets: vec![*n],
        })
        .collect();
    let endpoints = tuples
        .into_iter()
        .enumerate()
        .map(|(i, (ip, ports))| Workload {
            name: format!("felix-port-member-{i}"),
            namespace: SET_MEMBER_NAMESPACE.into(),
            interface: None,
            ips: vec![ip],
            labels: containing(IpNet::host(ip)),
            service_account: "default".into(),
            ports,
            mac: None,
            profiles: Some(Vec::new()),
        })
        .collect();
    (nets, endpoints)
}

/// The entities [`lower`] makes for the `IP`/`NET` members at the prefixes inside `within` (a delta's members:
/// the entities a delta can change), as `set_entities` makes them. `None` when an `IP_AND_PORT` member's
/// address lies inside one of them (its entity's labels and named ports would change too: not this path).
pub fn member_entities_within(state: &FelixState, within: &[IpNet]) -> Option<Vec<Entity>> {
    let inside =
        |p: &IpNet, w: &IpNet| p.family() == w.family() && p.prefix_len() >= w.prefix_len() && w.contains(p.addr());
    let mut prefixes: BTreeMap<IpNet, BTreeSet<&str>> = BTreeMap::new();
    for set in state.ip_sets.values() {
        for m in set.members.values() {
            match *m {
                Member::Net(n) => {
                    if within.iter().any(|w| inside(&n, w)) {
                        prefixes.entry(n).or_default();
                    }
                }
                Member::IpPort(ip, ..) => {
                    if within.iter().any(|w| w.contains(ip)) {
                        return None;
                    }
                }
            }
        }
    }
    // Each prefix carries every set with a member equal to it or wider.
    for (id, set) in &state.ip_sets {
        for m in set.members.values() {
            if let Member::Net(wider) = m {
                for (p, ids) in prefixes.iter_mut() {
                    if inside(p, wider) {
                        ids.insert(id);
                    }
                }
            }
        }
    }
    Some(
        prefixes
            .into_iter()
            .map(|(n, ids)| Entity {
                labels: ids.into_iter().map(|id| (set_label(id), String::new())).collect(),
                nets: vec![n],
                ports: Vec::new(),
            })
            .collect(),
    )
}

/// A policy's selector: the labels of the tier lists that name it (`lists` is in label order); a policy
/// no list names selects nothing.
fn selecting(key: &PolicyKey, lists: &[&str]) -> Selector {
    has_labels(lists.iter().map(|l| l.to_string()), false)
        .unwrap_or_else(|| Selector::from_expr(Expr::Has(policy_label(key))))
}

/// Felix's model on `base` (the node options Felix does not send: name, uplinks, services; `felix` is the
/// configuration already merged with the stream's `ConfigUpdate`) → the node and the resources in force.
/// Policies a previous lowering made, by key, with the state's version of each: an unchanged policy is the
/// same `Arc` in the next resource set, so the compiler knows it without looking at its rules again.
pub type PolicyCache = HashMap<PolicyKey, (u64, Arc<Policy>)>;

pub fn lower(
    state: &FelixState,
    base: &NodeConfig,
    felix: &FelixConfig,
    cache: &mut PolicyCache,
) -> Result<(NodeConfig, ResourceSet), String> {
    let mut resources = ResourceSet::new();

    // Tier and policy order, merged from every endpoint's lists.
    let mut tier_chains: Vec<Vec<String>> = Vec::new();
    let mut policy_chains: Vec<Vec<PolicyKey>> = Vec::new();
    let mut tier_default: BTreeMap<String, TierDefault> = BTreeMap::new();
    let mut ingress: BTreeSet<PolicyKey> = BTreeSet::new();
    let mut egress: BTreeSet<PolicyKey> = BTreeSet::new();
    let mut forward: BTreeSet<PolicyKey> = BTreeSet::new();
    let mut builtin: Vec<Tier> = Tier::builtin();
    builtin
        .sort_by(|a, b| a.order.unwrap_or(f64::MAX).total_cmp(&b.order.unwrap_or(f64::MAX)).then(a.name.cmp(&b.name)));
    tier_chains.push(builtin.iter().map(|t| t.name.clone()).collect());
    let mut walk = |lists: &[&[proto::TierInfo]], forward_list: Option<&[proto::TierInfo]>| {
        for (li, list) in lists.iter().enumerate() {
            tier_chains.push(list.iter().map(|t| t.name.clone()).collect());
            for t in list.iter() {
                // Untracked and preDNAT tiers (the first two lists of a host endpoint) always end in Pass; the
                // normal and forward lists carry the tier's own default action.
                if lists.len() == 1 || li >= 2 {
                    tier_default.entry(t.name.clone()).or_insert(if t.default_action == "Pass" {
                        TierDefault::Pass
                    } else {
                        TierDefault::Deny
                    });
                }
                for (list, set) in [(&t.ingress_policies, &mut ingress), (&t.egress_policies, &mut egress)] {
                    let keys: Vec<PolicyKey> = list.iter().map(PolicyKey::from_proto).collect();
                    set.extend(keys.iter().cloned());
                    policy_chains.push(keys);
                }
            }
        }
        for t in forward_list.into_iter().flatten() {
            forward.extend(t.ingress_policies.iter().chain(&t.egress_policies).map(PolicyKey::from_proto));
        }
    };
    // Endpoints alike have identical lists: walk each distinct set of lists once.
    let mut seen: BTreeMap<String, Vec<&[proto::TierInfo]>> = BTreeMap::new();
    for ep in state.workloads.values() {
        let lists = [&ep.tiers[..]];
        if let std::collections::btree_map::Entry::Vacant(v) = seen.entry(lists_label(&lists)) {
            walk(&lists, None);
            v.insert(lists.to_vec());
        }
    }
    for ep in state.host_endpoints.values() {
        let lists = hep_tier_lists(ep);
        if let std::collections::btree_map::Entry::Vacant(v) = seen.entry(lists_label(&lists)) {
            walk(&lists, Some(&ep.forward_tiers));
            v.insert(lists.to_vec());
        }
    }
    // Each policy selects the endpoints of the lists that name it.
    let mut lists_of: HashMap<PolicyKey, Vec<&str>> = HashMap::new();
    for (label, lists) in &seen {
        let named: BTreeSet<PolicyKey> = lists
            .iter()
            .flat_map(|l| l.iter())
            .flat_map(|t| t.ingress_policies.iter().chain(&t.egress_policies))
            .map(PolicyKey::from_proto)
            .collect();
        for key in named {
            lists_of.entry(key).or_default().push(label);
        }
    }
    // Endpoints alike have identical lists: merge each distinct list once.
    let tier_chains: Vec<Vec<String>> = distinct(tier_chains);
    let policy_chains: Vec<Vec<PolicyKey>> = distinct(policy_chains);
    let merged_tiers = merge_orders(&tier_chains);
    let tier_order = tier_orders(&merged_tiers);
    let policy_rank: HashMap<PolicyKey, usize> =
        merge_orders(&policy_chains).into_iter().enumerate().map(|(i, k)| (k, i)).collect();

    // Every tier an endpoint names exists, so the resolver orders them all by rank (a tier only untracked or
    // preDNAT lists name has no default action of its own: those stages end in Pass anyway).
    for name in &merged_tiers {
        resources.apply(Resource::Tier(Tier {
            name: name.clone(),
            order: tier_order.get(name).copied(),
            default_action: tier_default.get(name).copied().unwrap_or(TierDefault::Deny),
        }));
    }
    let mut lowered: PolicyCache = HashMap::with_capacity(state.policies.len());
    for (key, p) in &state.policies {
        let kind = policy_kind(key);
        let id = PolicyId {
            kind,
            namespace: if key.namespace.is_empty() { None } else { Some(key.namespace.clone()) },
            name: key.name.clone(),
        };
        // Active policies no endpoint lists (AssumeNeededOnEveryNode) select nothing; their order is moot.
        let order = Some(policy_rank.get(key).copied().unwrap_or(usize::MAX >> 12) as f64);
        let selector = selecting(key, lists_of.get(key).map(Vec::as_slice).unwrap_or_default());
        let (applies_ingress, applies_egress) = (ingress.contains(key), egress.contains(key));
        let apply_on_forward = p.untracked || p.pre_dnat || forward.contains(key);
        let reuse = cache.remove(key).filter(|(version, c)| {
            *version == p.version
                && c.order == order
                && c.selector == selector
                && (c.applies_ingress, c.applies_egress, c.apply_on_forward)
                    == (applies_ingress, applies_egress, apply_on_forward)
        });
        let policy = match reuse {
            Some((_, c)) => c,
            None => Arc::new(Policy {
                id,
                tier: p.tier.clone(),
                order,
                selector,
                applies_ingress,
                applies_egress,
                ingress: p.inbound.clone(),
                egress: p.outbound.clone(),
                do_not_track: p.untracked,
                pre_dnat: p.pre_dnat,
                apply_on_forward,
            }),
        };
        resources.apply(Resource::Policy(policy.clone()));
        lowered.insert(key.clone(), (p.version, policy));
    }
    // Only the policies in force stay cached.
    *cache = lowered;
    for (name, p) in &state.profiles {
        resources.apply(Resource::Profile(Profile {
            name: name.clone(),
            ingress: p.inbound.clone(),
            egress: p.outbound.clone(),
            labels_to_apply: Default::default(),
        }));
    }
    for (id, ep) in &state.host_endpoints {
        resources.apply(Resource::HostEndpoint(host_endpoint(&base.name, id, ep)?));
    }
    let (member_nets, member_tuples) = set_entities(state);
    for s in member_nets {
        resources.apply(Resource::NetworkSet(s));
    }

    let mut node = base.clone();
    node.felix = felix.clone();
    node.workloads = state.workloads.iter().map(|(k, ep)| workload(k, ep)).collect::<Result<_, _>>()?;
    node.remote_endpoints = member_tuples;
    Ok((node, resources))
}
