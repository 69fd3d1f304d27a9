//! Calico resources as users apply them: `projectcalico.org/v3` kinds, `networking.k8s.io/v1`
//! NetworkPolicy, and the calicoctl v1 forms, all read into one model (semantics §1).
//!
//! Loading is all-or-nothing: a file with one bad document yields an error naming the file, line, column
//! and field, and no resource from it.

mod cnp;
mod k8s;
mod load;
mod meta;
pub mod rule;
mod v1;
mod v3;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use load::{load_path, load_text, policy_files, read_policy_file, ReadError, ResourceDoc};
pub use rule::{Action, EntityRule, IcmpMatch, Port, Protocol, Rule, ServiceRef};
pub use v3::parse_named_port;

use crate::net::IpNet;
use crate::selector::Selector;

pub type Labels = BTreeMap<String, String>;

/// The kinds of policy, as Felix tells them apart (semantics §1.2, §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    GlobalNetworkPolicy,
    NetworkPolicy,
    KubernetesNetworkPolicy,
    StagedGlobalNetworkPolicy,
    StagedNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy, as Calico converts it.
    KubernetesClusterNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy, as Calico v3.29–v3.31 converted it.
    KubernetesAdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy, as Calico v3.30–v3.31 converted it.
    KubernetesBaselineAdminNetworkPolicy,
}

impl PolicyKind {
    /// Every kind, in declaration order.
    pub const ALL: [PolicyKind; 9] = [
        PolicyKind::GlobalNetworkPolicy,
        PolicyKind::NetworkPolicy,
        PolicyKind::KubernetesNetworkPolicy,
        PolicyKind::StagedGlobalNetworkPolicy,
        PolicyKind::StagedNetworkPolicy,
        PolicyKind::StagedKubernetesNetworkPolicy,
        PolicyKind::KubernetesClusterNetworkPolicy,
        PolicyKind::KubernetesAdminNetworkPolicy,
        PolicyKind::KubernetesBaselineAdminNetworkPolicy,
    ];

    /// Staged kinds are loaded but never enforced (semantics §1.2).
    pub fn is_staged(self) -> bool {
        matches!(
            self,
            PolicyKind::StagedGlobalNetworkPolicy
                | PolicyKind::StagedNetworkPolicy
                | PolicyKind::StagedKubernetesNetworkPolicy
        )
    }

    /// The short name used in log prefixes (`%k`, semantics §9.1).
    pub fn short_name(self) -> &'static str {
        match self {
            PolicyKind::GlobalNetworkPolicy => "gnp",
            PolicyKind::NetworkPolicy => "np",
            PolicyKind::KubernetesNetworkPolicy => "knp",
            PolicyKind::StagedGlobalNetworkPolicy => "sgnp",
            PolicyKind::StagedNetworkPolicy => "snp",
            PolicyKind::StagedKubernetesNetworkPolicy => "sknp",
            PolicyKind::KubernetesClusterNetworkPolicy => "kcnp",
            // Calico versions with these kinds had no `%k`; calxdp gives them names in the same style.
            PolicyKind::KubernetesAdminNetworkPolicy => "kanp",
            PolicyKind::KubernetesBaselineAdminNetworkPolicy => "kbanp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
            PolicyKind::StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
            PolicyKind::StagedNetworkPolicy => "StagedNetworkPolicy",
            PolicyKind::StagedKubernetesNetworkPolicy => "StagedKubernetesNetworkPolicy",
            PolicyKind::KubernetesClusterNetworkPolicy => "KubernetesClusterNetworkPolicy",
            PolicyKind::KubernetesAdminNetworkPolicy => "KubernetesAdminNetworkPolicy",
            PolicyKind::KubernetesBaselineAdminNetworkPolicy => "KubernetesBaselineAdminNetworkPolicy",
        }
    }

    /// The kind as a user applies it, when it differs from the stored kind (`delete: NetworkPolicy/ns/name`
    /// names a Kubernetes NetworkPolicy too).
    pub fn applied_as(self) -> Option<&'static str> {
        match self {
            PolicyKind::KubernetesNetworkPolicy => Some("NetworkPolicy"),
            PolicyKind::KubernetesClusterNetworkPolicy => Some("ClusterNetworkPolicy"),
            PolicyKind::KubernetesAdminNetworkPolicy => Some("AdminNetworkPolicy"),
            PolicyKind::KubernetesBaselineAdminNetworkPolicy => Some("BaselineAdminNetworkPolicy"),
            _ => None,
        }
    }
}

/// A policy's identity: kind, namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyId {
    /// The policy's name as Felix knows it: Calico v3.29–v3.31 named converted (Baseline)AdminNetworkPolicies
    /// with a prefix (`kanp.adminnetworkpolicy.`, `kbanp.baselineadminnetworkpolicy.`).
    pub fn felix_name(&self) -> String {
        match self.kind {
            PolicyKind::KubernetesAdminNetworkPolicy => format!("kanp.adminnetworkpolicy.{}", self.name),
            PolicyKind::KubernetesBaselineAdminNetworkPolicy => {
                format!("kbanp.baselineadminnetworkpolicy.{}", self.name)
            }
            _ => self.name.clone(),
        }
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind.name(), ns, self.name),
            None => write!(f, "{}/{}", self.kind.name(), self.name),
        }
    }
}

/// A policy of any kind, with its target selector already scoped (semantics §2.1) and its rules' peers
/// scoped (§2.2), its `types` defaulted (§1.2).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub id: PolicyId,
    pub tier: String,
    /// `None` is +∞: after every ordered policy (semantics §1.2).
    pub order: Option<f64>,
    /// The effective target selector.
    pub selector: Selector,
    pub applies_ingress: bool,
    pub applies_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub do_not_track: bool,
    pub pre_dnat: bool,
    pub apply_on_forward: bool,
}

/// `Tier.spec.defaultAction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierDefault {
    Deny,
    Pass,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub name: String,
    /// `None` is +∞ (semantics §1.5).
    pub order: Option<f64>,
    pub default_action: TierDefault,
}

/// The name of the tier of policies that name none.
pub const DEFAULT_TIER: &str = "default";
/// The tiers of ClusterNetworkPolicy's Admin and Baseline tiers.
pub const KUBE_ADMIN_TIER: &str = "kube-admin";
pub const KUBE_BASELINE_TIER: &str = "kube-baseline";
/// The tiers Calico v3.29–v3.31 put v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy in.
pub const ADMIN_NETWORK_POLICY_TIER: &str = "adminnetworkpolicy";
pub const BASELINE_ADMIN_NETWORK_POLICY_TIER: &str = "baselineadminnetworkpolicy";

impl Tier {
    /// The tiers Calico always has, with their fixed orders (semantics §1.5), and the two that Calico
    /// v3.29–v3.31 made for the v1alpha1 (Baseline)AdminNetworkPolicy (`ensureTierExists`).
    pub fn builtin() -> Vec<Tier> {
        vec![
            Tier { name: KUBE_ADMIN_TIER.into(), order: Some(1_000.0), default_action: TierDefault::Pass },
            Tier { name: DEFAULT_TIER.into(), order: Some(1_000_000.0), default_action: TierDefault::Deny },
            Tier { name: KUBE_BASELINE_TIER.into(), order: Some(10_000_000.0), default_action: TierDefault::Pass },
            Tier { name: ADMIN_NETWORK_POLICY_TIER.into(), order: Some(1_000.0), default_action: TierDefault::Pass },
            Tier {
                name: BASELINE_ADMIN_NETWORK_POLICY_TIER.into(),
                order: Some(10_000_000.0),
                default_action: TierDefault::Pass,
            },
        ]
    }
}

/// A named port an endpoint declares.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// `HostEndpoint` (semantics §1.1).
#[derive(Clone, Debug, PartialEq)]
pub struct HostEndpoint {
    pub name: String,
    pub node: String,
    /// `None` when empty: the interface is found by `expected_ips`. `Some("*")` is the all-interfaces HEP.
    pub interface_name: Option<String>,
    pub expected_ips: Vec<IpAddr>,
    pub labels: Labels,
    pub profiles: Vec<String>,
    pub ports: Vec<NamedPort>,
}

impl HostEndpoint {
    pub fn is_wildcard(&self) -> bool {
        self.interface_name.as_deref() == Some("*")
    }
}

/// `Profile` (semantics §1.4).
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Profile {
    pub name: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub labels_to_apply: Labels,
}

impl std::hash::Hash for Policy {
    /// Everything that changes what the policy does; the order by its bits (it is never NaN).
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.id.hash(h);
        self.tier.hash(h);
        self.order.map(f64::to_bits).hash(h);
        self.selector.hash(h);
        (self.applies_ingress, self.applies_egress, self.do_not_track, self.pre_dnat, self.apply_on_forward).hash(h);
        self.ingress.hash(h);
        self.egress.hash(h);
    }
}

impl Profile {
    /// The built-in allow-all profile used by auto host endpoints.
    pub const DEFAULT_ALLOW: &'static str = "projectcalico-default-allow";
}

/// `GlobalNetworkSet` or (with a namespace) `NetworkSet`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSet {
    pub namespace: Option<String>,
    pub name: String,
    pub labels: Labels,
    pub nets: Vec<IpNet>,
}

/// `FelixConfiguration`: the Felix settings it sets. Only `default` and `node.<nodename>` apply to a node.
#[derive(Clone, Debug, PartialEq)]
pub struct FelixConfiguration {
    pub name: String,
    pub settings: crate::felix::FelixSettings,
}

/// One loaded resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// Shared: an unchanged policy keeps its identity across resource-set versions, which the compiler's
    /// caches key on.
    Policy(Arc<Policy>),
    Tier(Tier),
    HostEndpoint(HostEndpoint),
    Profile(Profile),
    NetworkSet(NetworkSet),
    FelixConfiguration(Box<FelixConfiguration>),
}

/// A resource's identity in the store: `kind/name` or `kind/namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

impl ResourceKey {
    /// Parses `Kind/name` or `Kind/namespace/name`.
    pub fn parse(text: &str) -> Option<ResourceKey> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [kind, name] if !kind.is_empty() && !name.is_empty() => {
                Some(ResourceKey { kind: kind.to_string(), namespace: None, name: name.to_string() })
            }
            [kind, ns, name] if !kind.is_empty() && !ns.is_empty() && !name.is_empty() => {
                Some(ResourceKey { kind: kind.to_string(), namespace: Some(ns.to_string()), name: name.to_string() })
            }
            _ => None,
        }
    }

    /// Whether a key typed by a user (as in `delete: NetworkPolicy/ns/name`) names this stored key:
    /// a Kubernetes NetworkPolicy answers to `NetworkPolicy` as well as its own kind.
    pub fn answers_to(&self, asked: &ResourceKey) -> bool {
        let applied_as = [
            PolicyKind::KubernetesNetworkPolicy,
            PolicyKind::KubernetesClusterNetworkPolicy,
            PolicyKind::KubernetesAdminNetworkPolicy,
            PolicyKind::KubernetesBaselineAdminNetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.name() == self.kind)
        .and_then(PolicyKind::applied_as);
        let kind_ok = self.kind.eq_ignore_ascii_case(&asked.kind)
            || applied_as.is_some_and(|a| asked.kind.eq_ignore_ascii_case(a));
        kind_ok && self.namespace == asked.namespace && self.name == asked.name
    }
}

impl Resource {
    pub fn key(&self) -> ResourceKey {
        match self {
            Resource::Policy(p) => ResourceKey {
                kind: p.id.kind.name().into(),
                namespace: p.id.namespace.clone(),
                name: p.id.name.clone(),
            },
            Resource::Tier(t) => ResourceKey { kind: "Tier".into(), namespace: None, name: t.name.clone() },
            Resource::HostEndpoint(h) => {
                ResourceKey { kind: "HostEndpoint".into(), namespace: None, name: h.name.clone() }
            }
            Resource::Profile(p) => ResourceKey { kind: "Profile".into(), namespace: None, name: p.name.clone() },
            Resource::NetworkSet(s) => ResourceKey {
                kind: if s.namespace.is_some() { "NetworkSet" } else { "GlobalNetworkSet" }.into(),
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            Resource::FelixConfiguration(c) => {
                ResourceKey { kind: "FelixConfiguration".into(), namespace: None, name: c.name.clone() }
            }
        }
    }
}

/// Every resource in force, keyed as the datastore keys them; applying a resource with an existing key
/// replaces it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    by_key: BTreeMap<ResourceKey, Resource>,
}

impl ResourceSet {
    pub fn new() -> ResourceSet {
        ResourceSet::default()
    }

    pub fn apply(&mut self, r: Resource) {
        self.by_key.insert(r.key(), r);
    }

    pub fn apply_all(&mut self, rs: impl IntoIterator<Item = Resource>) {
        for r in rs {
            self.apply(r);
        }
    }

    /// Removes what `asked` names; returns how many resources were removed.
    pub fn delete(&mut self, asked: &ResourceKey) -> usize {
        let before = self.by_key.len();
        self.by_key.retain(|k, _| !k.answers_to(asked));
        before - self.by_key.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.by_key.values()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.iter().filter_map(|r| match r {
            Resource::Policy(p) => Some(p),
            _ => None,
        })
    }

    pub fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.iter().filter_map(|r| match r {
            Resource::Tier(t) => Some(t),
            _ => None,
        })
    }

    pub fn host_endpoints(&self) -> impl Iterator<Item = &HostEndpoint> {
        self.iter().filter_map(|r| match r {
            Resource::HostEndpoint(h) => Some(h),
            _ => None,
        })
    }

    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.iter().filter_map(|r| match r {
            Resource::Profile(p) => Some(p),
            _ => None,
        })
    }

    pub fn network_sets(&self) -> impl Iterator<Item = &NetworkSet> {
        self.iter().filter_map(|r| match r {
            Resource::NetworkSet(s) => Some(s),
            _ => None,
        })
    }

    /// The FelixConfiguration of that name, if any.
    pub fn felix_configuration(&self, name: &str) -> Option<&FelixConfiguration> {
        match self.by_key.get(&ResourceKey { kind: "FelixConfiguration".into(), namespace: None, name: name.into() }) {
            Some(Resource::FelixConfiguration(c)) => Some(&**c),
            _ => None,
        }
    }
}
