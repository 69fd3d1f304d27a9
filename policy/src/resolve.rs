//! The node and the resources in force, resolved into what evaluation needs: endpoints with their
//! effective labels and profiles (semantics §1.1, §1.4), host endpoints bound to interfaces, the
//! entities that rule selectors resolve to (§2.2), and tiers with their policies in Felix's order (§1.5, §4.1).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::felix::FelixConfig;
use crate::net::IpNet;
use crate::node::{NodeConfig, Workload};
use crate::resource::rule::{NAMESPACE_LABEL, ORCHESTRATOR_LABEL, SERVICE_ACCOUNT_LABEL};
use crate::resource::{Action, HostEndpoint, Labels, NamedPort, Policy, Profile, ResourceSet, Rule, Tier, TierDefault};

/// Which of a policy's flavours a walk uses (semantics §2.1 bucket table, §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// doNotTrack policies of a host endpoint (raw table).
    Untracked,
    /// preDNAT policies of a host endpoint (mangle PREROUTING).
    PreDnat,
    /// Normal policy: workload chains and host endpoint INPUT/OUTPUT chains.
    Normal,
    /// applyOnForward policies of a host endpoint for forwarded traffic (filter FORWARD).
    Forward,
}

impl Stage {
    /// Whether `p` is in this stage's bucket (semantics §2.1).
    pub fn holds(self, p: &Policy) -> bool {
        match self {
            Stage::Untracked => p.do_not_track,
            Stage::PreDnat => p.pre_dnat,
            Stage::Normal => !p.do_not_track && !p.pre_dnat,
            Stage::Forward => !p.do_not_track && !p.pre_dnat && p.apply_on_forward,
        }
    }

    /// Untracked and pre-DNAT tiers have their default action forced to Pass (semantics §2.1).
    pub fn forces_pass(self) -> bool {
        matches!(self, Stage::Untracked | Stage::PreDnat)
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Untracked => "untracked",
            Stage::PreDnat => "preDNAT",
            Stage::Normal => "normal",
            Stage::Forward => "forward",
        }
    }
}

/// Ingress or egress, from the endpoint's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl Policy {
    pub fn applies(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.applies_ingress,
            Direction::Egress => self.applies_egress,
        }
    }

    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

impl Profile {
    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A policy target on this node: a local pod or a local host endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// `WorkloadEndpoint/<ns>/<pod>` or `HostEndpoint/<name>`, for explanations.
    pub id: String,
    /// Own labels, then injected labels, then inherited profile labels (semantics §1.4).
    pub labels: Labels,
    pub profiles: Vec<String>,
}

/// A thing rule selectors can match: a pod (local or remote), a host endpoint, or a network set.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Entity {
    pub labels: Labels,
    pub nets: Vec<IpNet>,
    pub ports: Vec<NamedPort>,
}

/// A tier with its enforced policies in evaluation order.
#[derive(Clone, Debug, PartialEq)]
pub struct SortedTier {
    pub name: String,
    pub default_action: TierDefault,
    /// Indices into [`ResolvedNode::policies`].
    pub policies: Vec<usize>,
}

/// A host endpoint of this node with its effective labels.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalHostEndpoint {
    pub hep: HostEndpoint,
    pub endpoint: Endpoint,
}

/// The interface name Linux gives the loopback device: host-to-own-address traffic crosses it.
pub const LOOPBACK: &str = "lo";

#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedNode {
    /// The node, with the Felix configuration in force: its own `config:` under the FelixConfigurations
    /// that apply to it ([`felix_config`]).
    /// Shared, like the policies, tiers, profiles and endpoints: a patch that changes only entities copies
    /// pointers, not the node.
    pub node: std::sync::Arc<NodeConfig>,
    /// Enforced (non-staged) policies, shared with the resource set they came from.
    pub policies: std::sync::Arc<Vec<std::sync::Arc<Policy>>>,
    pub tiers: std::sync::Arc<Vec<SortedTier>>,
    pub profiles: std::sync::Arc<BTreeMap<String, Profile>>,
    /// Same indices as `node.workloads`.
    pub workloads: std::sync::Arc<Vec<Endpoint>>,
    pub host_endpoints: Vec<LocalHostEndpoint>,
    /// Named host endpoint governing each host interface (uplinks and `lo`), by index into `host_endpoints`.
    pub interface_hep: BTreeMap<String, usize>,
    /// The `*` host endpoint, default for every interface without its own.
    pub star_hep: Option<usize>,
    /// Shared one by one: a patch of a few (an IP set member) copies pointers, not every entity's labels.
    pub entities: Vec<std::sync::Arc<Entity>>,
}

/// The Felix configuration of `node` with `resources` in force: the node file's `config:`, then
/// `FelixConfiguration/default`, then `FelixConfiguration/node.<nodename>`, each parameter from the highest
/// that sets it, as Felix merges its sources (`config_params.go`). FelixConfigurations of other names do not
/// apply to this node.
pub fn felix_config(node: &NodeConfig, resources: &ResourceSet) -> FelixConfig {
    let mut felix = node.felix.clone();
    for name in ["default".to_string(), format!("node.{}", node.name)] {
        if let Some(c) = resources.felix_configuration(&name) {
            felix.apply(&c.settings);
        }
    }
    felix
}

impl ResolvedNode {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> ResolvedNode {
        let merged = NodeConfig { felix: felix_config(node, resources), ..node.clone() };
        let node = &merged;
        let profiles = all_profiles(node, resources);
        let workloads = node.workloads.iter().map(|w| workload_endpoint(node, w, &profiles)).collect::<Vec<_>>();

        let mut host_endpoints: Vec<LocalHostEndpoint> = resources
            .host_endpoints()
            .filter(|h| h.node == node.name)
            .map(|h| LocalHostEndpoint { hep: h.clone(), endpoint: host_endpoint(h, &profiles) })
            .collect();
        host_endpoints.sort_by(|a, b| a.hep.name.cmp(&b.hep.name));
        let (interface_hep, star_hep) = bind_host_endpoints(node, &host_endpoints);

        // Local workloads first, in the node's order (`with_workloads` relies on it), then remote ones.
        let mut entities: Vec<Entity> =
            workloads.iter().zip(&node.workloads).map(|(ep, w)| workload_entity(w, ep)).collect();
        for w in &node.remote_endpoints {
            entities.push(workload_entity(w, &workload_endpoint(node, w, &profiles)));
        }
        for h in resources.host_endpoints() {
            let ep = host_endpoint(h, &profiles);
            entities.push(Entity {
                labels: ep.labels,
                nets: h.expected_ips.iter().map(|ip| IpNet::host(*ip)).collect(),
                ports: h.ports.clone(),
            });
        }
        for s in resources.network_sets() {
            let mut labels = s.labels.clone();
            if let Some(ns) = &s.namespace {
                // A namespaced network set inherits its namespace's labels like a pod does.
                inherit(&mut labels, &[format!("kns.{ns}")], &profiles);
            }
            entities.push(Entity { labels, nets: s.nets.clone(), ports: Vec::new() });
        }
        let entities = entities.into_iter().map(std::sync::Arc::new).collect();

        let mut policies: Vec<std::sync::Arc<Policy>> =
            resources.policies().filter(|p| !p.id.kind.is_staged()).cloned().collect();
        // semantics §4.1: `(order, "<name>/<namespace>/<kind>")`, absent order last.
        policies.sort_by_cached_key(|p| (OrderKey(p.order.unwrap_or(f64::INFINITY)), tiebreak(p)));
        let tiers = sort_tiers(resources, &policies);

        ResolvedNode {
            node: std::sync::Arc::new(merged.clone()),
            policies: std::sync::Arc::new(policies),
            tiers: std::sync::Arc::new(tiers),
            profiles: std::sync::Arc::new(profiles),
            workloads: std::sync::Arc::new(workloads),
            host_endpoints,
            interface_hep,
            star_hep,
            entities,
        }
    }

    /// This world with `node`'s local workloads in place of its own, when nothing else differs: the rest of
    /// the node, the Felix configuration and the profiles (Kubernetes' generated ones depend on the
    /// workloads' namespaces and service accounts) are the same. Unchanged workloads keep their endpoints and
    /// entities; the entities of workloads that went or changed, and of those that came or changed, are
    /// returned beside it, so the compiled tables can be patched instead of compiled (`ProgramCache::patch`).
    /// `None` when something else differs: resolve the node whole.
    pub fn with_workloads(
        &self,
        node: &NodeConfig,
        resources: &ResourceSet,
    ) -> Option<(ResolvedNode, Vec<Entity>, Vec<Entity>)> {
        let old = &*self.node;
        let same_apart_from_workloads = node.name == old.name
            && node.uplinks == old.uplinks
            && node.namespaces == old.namespaces
            && node.remote_endpoints == old.remote_endpoints
            && node.services == old.services;
        if !same_apart_from_workloads {
            return None;
        }
        let merged = NodeConfig { felix: felix_config(node, resources), ..node.clone() };
        if merged.felix != old.felix {
            return None;
        }
        let profiles = all_profiles(&merged, resources);
        if profiles != *self.profiles {
            return None;
        }
        let at: std::collections::HashMap<(&str, &str), usize> =
            old.workloads.iter().enumerate().map(|(i, w)| ((w.namespace.as_str(), w.name.as_str()), i)).collect();
        let mut kept = vec![false; old.workloads.len()];
        let mut workloads = Vec::with_capacity(merged.workloads.len());
        let mut entities = Vec::with_capacity(self.entities.len() - old.workloads.len() + merged.workloads.len());
        let mut added = Vec::new();
        for w in &merged.workloads {
            match at.get(&(w.namespace.as_str(), w.name.as_str())).filter(|&&i| old.workloads[i] == *w) {
                Some(&i) => {
                    kept[i] = true;
                    workloads.push(self.workloads[i].clone());
                    entities.push(self.entities[i].clone());
                }
                None => {
                    let ep = workload_endpoint(&merged, w, &profiles);
                    let e = workload_entity(w, &ep);
                    added.push(e.clone());
                    workloads.push(ep);
                    entities.push(std::sync::Arc::new(e));
                }
            }
        }
        let removed = (0..old.workloads.len()).filter(|&i| !kept[i]).map(|i| (*self.entities[i]).clone()).collect();
        entities.extend(self.entities[old.workloads.len()..].iter().cloned());
        let world = ResolvedNode {
            node: std::sync::Arc::new(merged),
            workloads: std::sync::Arc::new(workloads),
            entities,
            ..self.clone()
        };
        Some((world, removed, added))
    }

    /// The host endpoint of a host interface: its own, else the `*` one if `allow_star`.
    pub fn hep_for_interface(&self, iface: &str, allow_star: bool) -> Option<usize> {
        self.interface_hep.get(iface).copied().or(if allow_star { self.star_hep } else { None })
    }

    /// Whether any policy of `stage` selects this endpoint (in any direction).
    pub fn has_policies(&self, endpoint: &Endpoint, stage: Stage) -> bool {
        self.policies.iter().any(|p| stage.holds(p) && p.selector.matches(&endpoint.labels))
    }

    /// Whether any policy of `stage` selects this endpoint for direction `d`.
    pub fn has_policies_for(&self, endpoint: &Endpoint, stage: Stage, d: Direction) -> bool {
        self.policies.iter().any(|p| stage.holds(p) && p.applies(d) && p.selector.matches(&endpoint.labels))
    }
}

/// A policy order as a sort key (orders are never NaN).
#[derive(Clone, Copy, PartialEq)]
struct OrderKey(f64);

impl Eq for OrderKey {}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn tiebreak(p: &Policy) -> String {
    format!("{}/{}/{}", p.id.name, p.id.namespace.as_deref().unwrap_or(""), p.id.kind.name())
}

/// semantics §1.5: existing tiers before merely referenced ones, finite orders before absent, ascending
/// order, then name. Built-in tiers always exist.
fn sort_tiers(resources: &ResourceSet, policies: &[std::sync::Arc<Policy>]) -> Vec<SortedTier> {
    let mut known: BTreeMap<String, Tier> = resources.tiers().map(|t| (t.name.clone(), t.clone())).collect();
    for t in Tier::builtin() {
        known.insert(t.name.clone(), t);
    }
    let mut rows: Vec<(bool, Option<f64>, String, TierDefault)> =
        known.values().map(|t| (true, t.order, t.name.clone(), t.default_action)).collect();
    for p in policies {
        if !rows.iter().any(|r| r.2 == p.tier) {
            rows.push((false, None, p.tier.clone(), TierDefault::Deny));
        }
    }
    rows.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.is_none().cmp(&b.1.is_none()))
            .then_with(|| a.1.unwrap_or(0.0).total_cmp(&b.1.unwrap_or(0.0)))
            .then_with(|| a.2.as_bytes().cmp(b.2.as_bytes()))
    });
    rows.into_iter()
        .map(|(_, _, name, default_action)| {
            let members = policies.iter().enumerate().filter(|(_, p)| p.tier == name).map(|(i, _)| i).collect();
            SortedTier { name, default_action, policies: members }
        })
        .collect()
}

/// Generated kns./ksa. profiles, the built-in default-allow, then the user's profiles (which win by name).
fn all_profiles(node: &NodeConfig, resources: &ResourceSet) -> BTreeMap<String, Profile> {
    let mut out = BTreeMap::new();
    for ns in node.all_namespaces() {
        let mut labels = Labels::new();
        let mut ns_labels = ns.labels.clone();
        // Kubernetes ≥1.21 labels every namespace with its name (semantics §5.5).
        ns_labels.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| ns.name.clone());
        for (k, v) in &ns_labels {
            labels.insert(format!("pcns.{k}"), v.clone());
        }
        labels.insert("pcns.projectcalico.org/name".into(), ns.name.clone());
        let name = format!("kns.{}", ns.name);
        out.insert(
            name.clone(),
            Profile {
                name,
                ingress: vec![Rule::new(Action::Allow)],
                egress: vec![Rule::new(Action::Allow)],
                labels_to_apply: labels,
            },
        );
    }
    for w in node.workloads.iter().chain(&node.remote_endpoints) {
        let name = format!("ksa.{}.{}", w.namespace, w.service_account);
        let mut labels = Labels::new();
        labels.insert("pcsa.projectcalico.org/name".into(), w.service_account.clone());
        out.entry(name.clone()).or_insert(Profile {
            name,
            ingress: Vec::new(),
            egress: Vec::new(),
            labels_to_apply: labels,
        });
    }
    out.insert(
        Profile::DEFAULT_ALLOW.into(),
        Profile {
            name: Profile::DEFAULT_ALLOW.into(),
            ingress: vec![Rule::new(Action::Allow)],
            egress: vec![Rule::new(Action::Allow)],
            labels_to_apply: Labels::new(),
        },
    );
    for p in resources.profiles() {
        out.insert(p.name.clone(), p.clone());
    }
    out
}

/// Adds each profile's labels, first definition winning (semantics §1.4 label inheritance).
fn inherit(labels: &mut Labels, profiles: &[String], all: &BTreeMap<String, Profile>) {
    for name in profiles {
        if let Some(p) = all.get(name) {
            for (k, v) in &p.labels_to_apply {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
}

fn workload_endpoint(_node: &NodeConfig, w: &Workload, profiles: &BTreeMap<String, Profile>) -> Endpoint {
    let mut labels = w.labels.clone();
    // semantics §1.1: the labels Calico injects into every Kubernetes workload endpoint.
    labels.insert(NAMESPACE_LABEL.into(), w.namespace.clone());
    labels.insert(ORCHESTRATOR_LABEL.into(), "k8s".into());
    if w.service_account.len() < 63 {
        labels.insert(SERVICE_ACCOUNT_LABEL.into(), w.service_account.clone());
    }
    let profile_names = w
        .profiles
        .clone()
        .unwrap_or_else(|| vec![format!("kns.{}", w.namespace), format!("ksa.{}.{}", w.namespace, w.service_account)]);
    inherit(&mut labels, &profile_names, profiles);
    Endpoint { id: format!("WorkloadEndpoint/{}/{}", w.namespace, w.name), labels, profiles: profile_names }
}

/// What rule selectors see of a workload (local or remote): its endpoint's labels at its addresses.
fn workload_entity(w: &Workload, ep: &Endpoint) -> Entity {
    Entity {
        labels: ep.labels.clone(),
        nets: w.ips.iter().map(|ip| IpNet::host(*ip)).collect(),
        ports: w.ports.clone(),
    }
}

fn host_endpoint(h: &HostEndpoint, profiles: &BTreeMap<String, Profile>) -> Endpoint {
    let mut labels = h.labels.clone();
    inherit(&mut labels, &h.profiles, profiles);
    Endpoint { id: format!("HostEndpoint/{}", h.name), labels, profiles: h.profiles.clone() }
}

/// semantics §1.1 "Resolution per host interface": a named match or an expected IP on the interface makes a
/// candidate; the smallest HEP name wins. The smallest `*` HEP is the default for the rest. An interface
/// `InterfaceExclude` names is one Felix never sees (its interface monitor reports no addresses for it), so
/// no host endpoint binds to it by name or address; the `*` one still covers it.
fn bind_host_endpoints(node: &NodeConfig, heps: &[LocalHostEndpoint]) -> (BTreeMap<String, usize>, Option<usize>) {
    let mut bound = BTreeMap::new();
    let interfaces: Vec<(&str, &[std::net::IpAddr])> = node
        .uplinks
        .iter()
        .map(|u| (u.name.as_str(), u.addrs.as_slice()))
        .chain(std::iter::once((LOOPBACK, &[][..])))
        .collect();
    for (iface, addrs) in interfaces {
        if node.felix.excludes_interface(iface) {
            continue;
        }
        // `heps` is sorted by name, so the first candidate is the smallest.
        let winner = heps.iter().position(|h| match h.hep.interface_name.as_deref() {
            Some("*") => false,
            Some(name) => name == iface,
            None => h.hep.expected_ips.iter().any(|ip| addrs.contains(ip)),
        });
        if let Some(i) = winner {
            bound.insert(iface.to_string(), i);
        }
    }
    let star = heps.iter().position(|h| h.hep.is_wildcard());
    (bound, star)
}
