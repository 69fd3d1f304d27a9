//! What the driver holds from Felix's stream: IP sets with their members, active policies and profiles (rules
//! already converted to calxdp's rule model, matching by IP set), endpoints with their tiers, and the raw
//! config. Every message is checked as it arrives against what came before it: Felix guarantees that
//! anything referenced was sent earlier and that nothing still referenced is removed (event_sequencer.go
//! flush order), so a message that breaks that is a broken stream, reported with its sequence number.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use calxdp_policy::net::IpNet;
use calxdp_policy::resource::{Protocol, Rule};

pub use super::convert::{hep_tier_lists, WorkloadKey};
use super::convert::{rule_from_proto, RuleSets};
use super::proto::{self, ip_set_update::IpSetType, to_dataplane::Payload, ToDataplane};

/// A broken stream: which message (sequence number and type) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub seq: u64,
    pub message: &'static str,
    pub detail: String,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message {} ({}): {}", self.seq, self.message, self.detail)
    }
}

impl std::error::Error for StreamError {}

/// The three kinds of IP set Felix sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    Ip,
    IpAndPort,
    Net,
}

/// An IP set member that is not of its set's kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadMember {
    #[error("member '{0}' is not an address or CIDR")]
    Net(String),
    #[error("member '{0}' is not <ip>,<tcp|udp|sctp>:<port>")]
    IpPort(String),
}

/// One member of an IP set, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    /// An address or prefix (`IP` and `NET` sets; Felix writes addresses as `/32`, `/128`).
    Net(IpNet),
    /// `<ip>,<proto>:<port>` (`IP_AND_PORT` sets: named ports and service endpoints).
    IpPort(IpAddr, Protocol, u16),
}

impl Member {
    pub fn parse(kind: SetKind, text: &str) -> Result<Member, BadMember> {
        let net = |t: &str| -> Result<IpNet, BadMember> {
            if let Ok(ip) = t.parse::<IpAddr>() {
                return Ok(IpNet::host(ip));
            }
            t.parse::<IpNet>().map_err(|_| BadMember::Net(text.to_string()))
        };
        match kind {
            SetKind::Ip | SetKind::Net => net(text).map(Member::Net),
            SetKind::IpAndPort => {
                let bad = || BadMember::IpPort(text.to_string());
                let (ip, rest) = text.split_once(',').ok_or_else(bad)?;
                let (proto, port) = rest.split_once(':').ok_or_else(bad)?;
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let proto = match proto {
                    "tcp" => Protocol::TCP,
                    "udp" => Protocol::UDP,
                    "sctp" => Protocol::SCTP,
                    _ => return Err(bad()),
                };
                let port: u16 = port.parse().map_err(|_| bad())?;
                Ok(Member::IpPort(ip, proto, port))
            }
        }
    }
}

/// An IP set: its kind and its members by the string Felix sent (deltas remove by that string).
#[derive(Clone, Debug, PartialEq)]
pub struct IpSet {
    pub kind: SetKind,
    pub members: BTreeMap<String, Member>,
}

/// A policy's identity as Felix sends it (`PolicyID`): unique only as the triple.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl PolicyKey {
    pub fn from_proto(id: &proto::PolicyId) -> PolicyKey {
        PolicyKey { kind: id.kind.clone(), namespace: id.namespace.clone(), name: id.name.clone() }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.kind.is_empty() { "Policy" } else { &self.kind };
        if self.namespace.is_empty() {
            write!(f, "{kind}/{}", self.name)
        } else {
            write!(f, "{kind}/{}/{}", self.namespace, self.name)
        }
    }
}

/// An active policy: its flags, its tier, its rules converted.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivePolicy {
    pub tier: String,
    pub untracked: bool,
    pub pre_dnat: bool,
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
    /// Every IP set the rules refer to (with repeats), for reference counting.
    sets: Vec<String>,
    /// Distinct for every update the state took: what the lowering's cache of converted policies checks.
    pub version: u64,
}

/// An active profile's rules, converted.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveProfile {
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
    sets: Vec<String>,
}

/// What a message changed, so the driver knows what to republish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing calxdp acts on (an unknown case, host metadata, ...).
    Ignored,
    /// The model changed.
    Changed,
    /// `InSync`: the snapshot is complete.
    InSync,
}

/// Everything the stream has said so far.
#[derive(Clone, Debug, Default)]
pub struct FelixState {
    /// The last `ConfigUpdate`'s parameters (`None` until the first one).
    pub config: Option<BTreeMap<String, String>>,
    pub ip_sets: BTreeMap<String, IpSet>,
    pub policies: BTreeMap<PolicyKey, ActivePolicy>,
    pub profiles: BTreeMap<String, ActiveProfile>,
    pub workloads: BTreeMap<WorkloadKey, proto::WorkloadEndpoint>,
    pub host_endpoints: BTreeMap<String, proto::HostEndpoint>,
    pub hostname: Option<String>,
    pub in_sync: bool,
    set_refs: HashMap<String, usize>,
    /// Per policy, how many distinct tier lists in `tier_lists` name it.
    policy_refs: HashMap<PolicyKey, usize>,
    profile_refs: HashMap<String, usize>,
    tier_lists: TierLists,
    /// Each workload endpoint's `lists_hash`, kept beside `workloads`.
    workload_lists: HashMap<WorkloadKey, u64>,
    /// The version the next `ActivePolicyUpdate` gets.
    next_policy_version: u64,
}

impl FelixState {
    /// Changes whenever a tier list no endpoint carried comes, or the last endpoint carrying one goes: while
    /// it stays, endpoints came and went under lists others carry, and the policies' selectors, tiers and
    /// orders lower as before.
    pub fn lists_generation(&self) -> u64 {
        self.tier_lists.generation
    }
}

fn payload_name(p: &Payload) -> &'static str {
    match p {
        Payload::InSync(_) => "InSync",
        Payload::IpsetUpdate(_) => "IPSetUpdate",
        Payload::IpsetDeltaUpdate(_) => "IPSetDeltaUpdate",
        Payload::IpsetRemove(_) => "IPSetRemove",
        Payload::ActiveProfileUpdate(_) => "ActiveProfileUpdate",
        Payload::ActiveProfileRemove(_) => "ActiveProfileRemove",
        Payload::ActivePolicyUpdate(_) => "ActivePolicyUpdate",
        Payload::ActivePolicyRemove(_) => "ActivePolicyRemove",
        Payload::HostEndpointUpdate(_) => "HostEndpointUpdate",
        Payload::HostEndpointRemove(_) => "HostEndpointRemove",
        Payload::WorkloadEndpointUpdate(_) => "WorkloadEndpointUpdate",
        Payload::WorkloadEndpointRemove(_) => "WorkloadEndpointRemove",
        Payload::ConfigUpdate(_) => "ConfigUpdate",
        Payload::HostMetadataUpdate(_) => "HostMetadataUpdate",
    }
}

fn convert_rules(rules: &[proto::Rule], list: &str, sets: &mut Vec<String>) -> Result<Vec<Rule>, String> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let RuleSets { rule, sets: used } = rule_from_proto(r).map_err(|e| format!("{list} rule {i}: {e}"))?;
            sets.extend(used);
            Ok(rule)
        })
        .collect()
}

/// The distinct tier lists endpoints carry, each with how many endpoints carry it and the policies it names.
/// Most endpoints share their lists and one names hundreds of policies: checked and counted per endpoint,
/// they took two of the nine seconds of a 1000-endpoint, 10 000-policy snapshot.
#[derive(Clone, Debug, Default)]
struct TierLists {
    by_hash: HashMap<u64, Vec<TierListUse>>,
    /// Bumped when a distinct list comes or goes (`FelixState::lists_generation`).
    generation: u64,
}

#[derive(Clone, Debug)]
struct TierListUse {
    lists: Vec<Vec<proto::TierInfo>>,
    policies: Vec<PolicyKey>,
    endpoints: usize,
}

impl TierListUse {
    fn is(&self, lists: &[&[proto::TierInfo]]) -> bool {
        self.lists.len() == lists.len() && self.lists.iter().zip(lists).all(|(a, b)| a.as_slice() == *b)
    }
}

impl TierLists {
    /// Where among the lists of its hash an endpoint carries `lists` (whose hash is `hash`), if one does.
    /// (Lists run to thousands of policy ids: they are compared once per endpoint taken.)
    fn position(&self, hash: u64, lists: &[&[proto::TierInfo]]) -> Option<usize> {
        self.by_hash.get(&hash)?.iter().position(|u| u.is(lists))
    }

    /// Counts one more endpoint carrying the lists [`TierLists::position`] found at `at`.
    fn take_carried(&mut self, hash: u64, at: usize) {
        if let Some(u) = self.by_hash.get_mut(&hash).and_then(|uses| uses.get_mut(at)) {
            u.endpoints += 1;
        }
    }

    /// Counts the first endpoint carrying `lists`, which name `policies`.
    fn take_new(&mut self, hash: u64, lists: &[&[proto::TierInfo]], policies: Vec<PolicyKey>) {
        let lists = lists.iter().map(|l| l.to_vec()).collect();
        self.by_hash.entry(hash).or_default().push(TierListUse { lists, policies, endpoints: 1 });
        self.generation += 1;
    }

    /// Counts one endpoint fewer carrying `lists`; the policies they named when it was the last.
    fn release(&mut self, lists: &[&[proto::TierInfo]]) -> Option<Vec<PolicyKey>> {
        let hash = super::convert::lists_hash(lists);
        let uses = self.by_hash.get_mut(&hash)?;
        let i = uses.iter().position(|u| u.is(lists))?;
        uses[i].endpoints -= 1;
        if uses[i].endpoints > 0 {
            return None;
        }
        let gone = uses.swap_remove(i);
        if uses.is_empty() {
            self.by_hash.remove(&hash);
        }
        self.generation += 1;
        Some(gone.policies)
    }

    /// How many endpoints carry a list naming `key` (for an error message).
    fn endpoints_naming(&self, key: &PolicyKey) -> usize {
        self.by_hash.values().flatten().filter(|u| u.policies.binary_search(key).is_ok()).map(|u| u.endpoints).sum()
    }
}

fn bump<K: std::hash::Hash + Eq + Clone>(refs: &mut HashMap<K, usize>, keys: &[K], up: bool) {
    for k in keys {
        if up {
            *refs.entry(k.clone()).or_default() += 1;
        } else if let Some(n) = refs.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                refs.remove(k);
            }
        }
    }
}

impl FelixState {
    pub fn new() -> FelixState {
        FelixState::default()
    }

    /// Applies one message. An error leaves the state as it was before the message.
    pub fn apply(&mut self, msg: ToDataplane) -> Result<Applied, StreamError> {
        let seq = msg.sequence_number;
        let Some(payload) = msg.payload else {
            // A oneof case this driver does not know (routes, VTEPs, WireGuard, services, ...): ignored, as
            // protobuf intends.
            return Ok(Applied::Ignored);
        };
        let message = payload_name(&payload);
        let err = |detail: String| StreamError { seq, message, detail };
        if self.config.is_none() && !matches!(payload, Payload::ConfigUpdate(_)) {
            return Err(err("Felix sends ConfigUpdate first; this stream did not".into()));
        }
        match payload {
            Payload::ConfigUpdate(c) => {
                self.config = Some(c.config.into_iter().collect());
                Ok(Applied::Changed)
            }
            Payload::InSync(_) => {
                self.in_sync = true;
                Ok(Applied::InSync)
            }
            Payload::HostMetadataUpdate(h) => {
                self.hostname = Some(h.hostname);
                Ok(Applied::Ignored)
            }
            Payload::IpsetUpdate(u) => {
                let kind = match IpSetType::try_from(u.r#type) {
                    Ok(IpSetType::Ip) => SetKind::Ip,
                    Ok(IpSetType::IpAndPort) => SetKind::IpAndPort,
                    Ok(IpSetType::Net) => SetKind::Net,
                    Err(_) => return Err(err(format!("IP set '{}' has unknown type {}", u.id, u.r#type))),
                };
                let mut members = BTreeMap::new();
                for m in u.members {
                    let parsed = Member::parse(kind, &m).map_err(|e| err(format!("IP set '{}': {e}", u.id)))?;
                    members.insert(m, parsed);
                }
                // An update for a set that exists replaces its members (a set that went inactive and active
                // again within one flush).
                self.ip_sets.insert(u.id, IpSet { kind, members });
                Ok(Applied::Changed)
            }
            Payload::IpsetDeltaUpdate(d) => {
                let Some(set) = self.ip_sets.get(&d.id) else {
                    return Err(err(format!("delta for unknown IP set '{}'", d.id)));
                };
                let mut next = set.clone();
                for m in &d.removed_members {
                    if next.members.remove(m).is_none() {
                        return Err(err(format!("IP set '{}' has no member '{m}' to remove", d.id)));
                    }
                }
                for m in d.added_members {
                    let parsed = Member::parse(next.kind, &m).map_err(|e| err(format!("IP set '{}': {e}", d.id)))?;
                    next.members.insert(m, parsed);
                }
                self.ip_sets.insert(d.id, next);
                Ok(Applied::Changed)
            }
            Payload::IpsetRemove(r) => {
                if !self.ip_sets.contains_key(&r.id) {
                    return Err(err(format!("unknown IP set '{}'", r.id)));
                }
                if let Some(n) = self.set_refs.get(&r.id) {
                    return Err(err(format!("IP set '{}' is still used by {n} rule(s)", r.id)));
                }
                self.ip_sets.remove(&r.id);
                Ok(Applied::Changed)
            }
            Payload::ActivePolicyUpdate(u) => {
                let id = u.id.ok_or_else(|| err("no policy id".into()))?;
                let key = PolicyKey::from_proto(&id);
                let p = u.policy.unwrap_or_default();
                let mut sets = Vec::new();
                let inbound =
                    convert_rules(&p.inbound_rules, "inbound", &mut sets).map_err(|e| err(format!("{key}: {e}")))?;
                let outbound =
                    convert_rules(&p.outbound_rules, "outbound", &mut sets).map_err(|e| err(format!("{key}: {e}")))?;
                if let Some(s) = sets.iter().find(|s| !self.ip_sets.contains_key(*s)) {
                    return Err(err(format!("{key} refers to unknown IP set '{s}'")));
                }
                let tier = if p.tier.is_empty() { "default".to_string() } else { p.tier };
                self.next_policy_version += 1;
                let version = self.next_policy_version;
                let next = ActivePolicy {
                    tier,
                    untracked: p.untracked,
                    pre_dnat: p.pre_dnat,
                    inbound,
                    outbound,
                    sets,
                    version,
                };
                bump(&mut self.set_refs, &next.sets, true);
                if let Some(old) = self.policies.insert(key, next) {
                    bump(&mut self.set_refs, &old.sets, false);
                }
                Ok(Applied::Changed)
            }
            Payload::ActivePolicyRemove(r) => {
                let key = PolicyKey::from_proto(&r.id.unwrap_or_default());
                if self.policy_refs.contains_key(&key) {
                    let n = self.tier_lists.endpoints_naming(&key);
                    return Err(err(format!("{key} is still in the tiers of {n} endpoint(s)")));
                }
                let old = self.policies.remove(&key).ok_or_else(|| err(format!("unknown policy {key}")))?;
                bump(&mut self.set_refs, &old.sets, false);
                Ok(Applied::Changed)
            }
            Payload::ActiveProfileUpdate(u) => {
                let name = u.id.map(|i| i.name).unwrap_or_default();
                let p = u.profile.unwrap_or_default();
                let mut sets = Vec::new();
                let inbound = convert_rules(&p.inbound_rules, "inbound", &mut sets)
                    .map_err(|e| err(format!("profile {name}: {e}")))?;
                let outbound = convert_rules(&p.outbound_rules, "outbound", &mut sets)
                    .map_err(|e| err(format!("profile {name}: {e}")))?;
                if let Some(s) = sets.iter().find(|s| !self.ip_sets.contains_key(*s)) {
                    return Err(err(format!("profile {name} refers to unknown IP set '{s}'")));
                }
                let next = ActiveProfile { inbound, outbound, sets };
                bump(&mut self.set_refs, &next.sets, true);
                if let Some(old) = self.profiles.insert(name, next) {
                    bump(&mut self.set_refs, &old.sets, false);
                }
                Ok(Applied::Changed)
            }
            Payload::ActiveProfileRemove(r) => {
                let name = r.id.map(|i| i.name).unwrap_or_default();
                if let Some(n) = self.profile_refs.get(&name) {
                    return Err(err(format!("profile {name} is still used by {n} endpoint(s)")));
                }
                let old = self.profiles.remove(&name).ok_or_else(|| err(format!("unknown profile '{name}'")))?;
                bump(&mut self.set_refs, &old.sets, false);
                Ok(Applied::Changed)
            }
            Payload::WorkloadEndpointUpdate(u) => {
                let key = WorkloadKey::from_proto(&u.id.unwrap_or_default());
                let ep = u.endpoint.unwrap_or_default();
                let hash = super::convert::lists_hash(&[&ep.tiers]);
                super::convert::workload(&key, &ep, hash).map_err(|e| err(e.to_string()))?;
                self.take_endpoint(hash, &[&ep.tiers], &ep.profile_ids).map_err(|e| err(format!("{key}: {e}")))?;
                self.workload_lists.insert(key.clone(), hash);
                if let Some(old) = self.workloads.insert(key, ep) {
                    self.release_endpoint(&[&old.tiers], &old.profile_ids);
                }
                Ok(Applied::Changed)
            }
            Payload::WorkloadEndpointRemove(r) => {
                let key = WorkloadKey::from_proto(&r.id.unwrap_or_default());
                let old = self.workloads.remove(&key).ok_or_else(|| err(format!("unknown workload endpoint {key}")))?;
                self.workload_lists.remove(&key);
                self.release_endpoint(&[&old.tiers], &old.profile_ids);
                Ok(Applied::Changed)
            }
            Payload::HostEndpointUpdate(u) => {
                let id = u.id.map(|i| i.endpoint_id).unwrap_or_default();
                let ep = u.endpoint.unwrap_or_default();
                super::convert::host_endpoint("", &id, &ep).map_err(|e| err(e.to_string()))?;
                let lists = hep_tier_lists(&ep);
                self.take_endpoint(super::convert::lists_hash(&lists), &lists, &ep.profile_ids)
                    .map_err(|e| err(format!("host endpoint {id}: {e}")))?;
                if let Some(old) = self.host_endpoints.insert(id, ep) {
                    self.release_endpoint(&hep_tier_lists(&old), &old.profile_ids);
                }
                Ok(Applied::Changed)
            }
            Payload::HostEndpointRemove(r) => {
                let id = r.id.map(|i| i.endpoint_id).unwrap_or_default();
                let old =
                    self.host_endpoints.remove(&id).ok_or_else(|| err(format!("unknown host endpoint '{id}'")))?;
                self.release_endpoint(&hep_tier_lists(&old), &old.profile_ids);
                Ok(Applied::Changed)
            }
        }
    }

    /// The `lists_hash` of workload endpoint `key`'s tier list.
    pub fn workload_lists_hash(&self, key: &WorkloadKey, ep: &proto::WorkloadEndpoint) -> u64 {
        self.workload_lists.get(key).copied().unwrap_or_else(|| super::convert::lists_hash(&[&ep.tiers]))
    }

    /// Takes an endpoint's references: its tier lists (checked, the first time they are seen, to name only
    /// known policies) and its profiles (checked to exist). Nothing is taken when a check fails.
    fn take_endpoint(&mut self, hash: u64, lists: &[&[proto::TierInfo]], profiles: &[String]) -> Result<(), String> {
        let carried = self.tier_lists.position(hash, lists);
        let mut pols = Vec::new();
        if carried.is_none() {
            for t in lists.iter().flat_map(|l| l.iter()) {
                for id in t.ingress_policies.iter().chain(&t.egress_policies) {
                    let key = PolicyKey::from_proto(id);
                    if !self.policies.contains_key(&key) {
                        return Err(format!("tier {} refers to unknown policy {key}", t.name));
                    }
                    pols.push(key);
                }
            }
        }
        if let Some(p) = profiles.iter().find(|p| !self.profiles.contains_key(*p)) {
            return Err(format!("refers to unknown profile '{p}'"));
        }
        match carried {
            Some(at) => self.tier_lists.take_carried(hash, at),
            None => {
                pols.sort();
                pols.dedup();
                bump(&mut self.policy_refs, &pols, true);
                self.tier_lists.take_new(hash, lists, pols);
            }
        }
        bump(&mut self.profile_refs, profiles, true);
        Ok(())
    }

    fn release_endpoint(&mut self, lists: &[&[proto::TierInfo]], profiles: &[String]) {
        if let Some(pols) = self.tier_lists.release(lists) {
            bump(&mut self.policy_refs, &pols, false);
        }
        bump(&mut self.profile_refs, profiles, false);
    }
}
