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

use foldhash::{HashSet, HashSetExt};
use std::net::IpAddr;
use std::sync::Arc;

use calxdp_policy::net::IpNet;
use calxdp_policy::node::{FelixConfig, NodeConfig, Workload};
use calxdp_policy::resolve::Entity;
use calxdp_policy::resource::{
    NamedPort, NetworkSet, Policy, PolicyId, PolicyKind, Profile, Resource, ResourceSet, Tier, TierDefault,
};
use calxdp_policy::selector::{Expr, Selector};

use super::convert::{
    has_labels, hashed_lists_label, hep_tier_lists, host_endpoint, lists_label, set_label, workload, ConvertError,
};
use super::proto;
use super::state::{FelixState, Member, PolicyKey};

/// The label an endpoint carries for each policy in its tiers.
pub fn policy_label(key: &PolicyKey) -> String {
    format!("felixpolicy/{}/{}/{}", key.kind, key.namespace, key.name)
}

/// The namespace the entities standing for `IP_AND_PORT` members are put in (no endpoint refers to it).
pub const SET_MEMBER_NAMESPACE: &str = "calxdp-felix-sets";

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
fn merge_orders<K: Ord + Clone + std::hash::Hash>(chains: &[Vec<K>]) -> Vec<K> {
    // The graph is built on indices into the sorted distinct items, so index order is key order and the
    // merge compares keys only once each, while sorting them (policy keys are three strings with long
    // common prefixes: comparing them per edge was most of a publication's lowering).
    let mut keys: Vec<&K> = chains.iter().flatten().collect();
    keys.sort_unstable();
    keys.dedup();
    let ids: foldhash::HashMap<&K, u32> = keys.iter().enumerate().map(|(i, &k)| (k, i as u32)).collect();
    let index = |k: &K| ids[k];
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for c in chains {
        let ids: Vec<u32> = c.iter().map(index).collect();
        edges.extend(ids.windows(2).filter(|w| w[0] != w[1]).map(|w| (w[0], w[1])));
    }
    edges.sort_unstable();
    edges.dedup();
    let mut indegree = vec![0usize; keys.len()];
    for &(_, b) in &edges {
        indegree[b as usize] += 1;
    }
    let mut ready: BTreeSet<u32> = (0..keys.len() as u32).filter(|&k| indegree[k as usize] == 0).collect();
    let mut taken = vec![false; keys.len()];
    let mut out = Vec::with_capacity(keys.len());
    while let Some(k) = ready.pop_first() {
        // `edges` is sorted by source: k's successors are one run.
        let from = edges.partition_point(|e| e.0 < k);
        for &(_, n) in edges[from..].iter().take_while(|e| e.0 == k) {
            indegree[n as usize] -= 1;
            if indegree[n as usize] == 0 {
                ready.insert(n);
            }
        }
        taken[k as usize] = true;
        out.push(keys[k as usize].clone());
    }
    out.extend((0..keys.len()).filter(|&k| !taken[k]).map(|k| keys[k].clone()));
    out
}

/// Each list once (in no particular order: the merge's result does not depend on it).
fn distinct<K: Eq + std::hash::Hash>(chains: Vec<Vec<K>>) -> Vec<Vec<K>> {
    chains.into_iter().collect::<HashSet<_>>().into_iter().collect()
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
) -> Result<(NodeConfig, ResourceSet), ConvertError> {
    let mut resources = ResourceSet::new();

    // Tier and policy order, merged from every endpoint's lists.
    let mut tier_chains: Vec<Vec<String>> = Vec::new();
    let mut policy_chains: Vec<Vec<PolicyKey>> = Vec::new();
    let mut tier_default: BTreeMap<String, TierDefault> = BTreeMap::new();
    let mut ingress: HashSet<PolicyKey> = HashSet::new();
    let mut egress: HashSet<PolicyKey> = HashSet::new();
    let mut forward: HashSet<PolicyKey> = HashSet::new();
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
    for (key, ep) in &state.workloads {
        let lists = [&ep.tiers[..]];
        let label = hashed_lists_label(state.workload_lists_hash(key, ep));
        if let std::collections::btree_map::Entry::Vacant(v) = seen.entry(label) {
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
        let named: HashSet<PolicyKey> = lists
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
    node.workloads = workloads(state)?;
    node.remote_endpoints = member_tuples;
    Ok((node, resources))
}

/// The node's workloads: every workload endpoint, in key order.
pub fn workloads(state: &FelixState) -> Result<Vec<Workload>, ConvertError> {
    state.workloads.iter().map(|(k, ep)| workload(k, ep, state.workload_lists_hash(k, ep))).collect()
}

#[cfg(test)]
mod merge_tests {
    use super::merge_orders;

    fn v(items: &str) -> Vec<String> {
        items.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_chain_keeps_its_order_and_ready_items_come_in_key_order() {
        assert_eq!(merge_orders(&[v("z b d"), v("a c d"), v("b c")]), v("a z b c d"));
        assert_eq!(merge_orders(&[v("x"), v("x x")]), v("x"));
    }

    #[test]
    fn items_left_in_a_cycle_follow_in_key_order() {
        assert_eq!(merge_orders(&[v("b a"), v("a b"), v("c")]), v("c a b"));
    }
}
