//! Kubernetes' cluster-scoped policies, converted as Calico converts them into GlobalNetworkPolicies that
//! Felix then reads like any other:
//!
//! - `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (Calico's `clusternetworkpolicy.go`): tier
//!   Admin → `kube-admin`, Baseline → `kube-baseline`, priority as the order, Accept/Deny/Pass as
//!   Allow/Deny/Pass;
//! - the older `v1alpha1` AdminNetworkPolicy and BaselineAdminNetworkPolicy as Calico v3.29–v3.31 converted
//!   them (`conversion.go`): tiers `adminnetworkpolicy` and `baselineadminnetworkpolicy`, ANP priority as the
//!   order, every BANP at order 1000, actions passed through.
//!
//! What the API server's CRD validation refuses (a tier or action outside the enumeration, a subject or peer
//! with other than exactly one field, ports out of range, a range whose start is not below its end, a bad
//! CIDR) is refused here too, naming the field. A rule Calico cannot convert (a `nodes` or `domainNames`
//! peer) fails closed as Calico makes it: a Deny or Pass rule becomes a bare Deny in its place, an
//! Accept/Allow rule is left out; each with a warning.

use std::collections::BTreeMap;

use super::k8s::label_selector;
use super::rule::{parse_net, prefix_namespace_selector, EntityRule, Port, Protocol, Rule, ORCHESTRATOR_LABEL};
use super::v3::{metadata, target_selector};
use super::{Action, Policy, PolicyId, PolicyKind, Resource};
use super::{ADMIN_NETWORK_POLICY_TIER, BASELINE_ADMIN_NETWORK_POLICY_TIER, KUBE_ADMIN_TIER, KUBE_BASELINE_TIER};
use crate::net::IpNet;
use crate::selector::{Expr, Selector};
use crate::yaml::{Field, LoadError};

/// Which of the three kinds, and so which vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// v1alpha2 ClusterNetworkPolicy: `protocols`, Accept.
    Cluster,
    /// v1alpha1 AdminNetworkPolicy: `ports`, Allow, Pass.
    Admin,
    /// v1alpha1 BaselineAdminNetworkPolicy: `ports`, Allow and Deny only, no priority.
    Baseline,
}

impl Flavor {
    fn kind(self) -> PolicyKind {
        match self {
            Flavor::Cluster => PolicyKind::KubernetesClusterNetworkPolicy,
            Flavor::Admin => PolicyKind::KubernetesAdminNetworkPolicy,
            Flavor::Baseline => PolicyKind::KubernetesBaselineAdminNetworkPolicy,
        }
    }

    /// The most rules per direction and peers per rule the CRD allows.
    fn max_items(self) -> usize {
        match self {
            Flavor::Cluster => 25,
            Flavor::Admin | Flavor::Baseline => 100,
        }
    }
}

/// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
pub(super) fn parse_cluster(f: Field<'_>, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    convert(f, Flavor::Cluster, warnings)
}

/// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy or BaselineAdminNetworkPolicy.
pub(super) fn parse_v1alpha1(f: Field<'_>, kind: &str, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    let flavor = if kind == "BaselineAdminNetworkPolicy" { Flavor::Baseline } else { Flavor::Admin };
    convert(f, flavor, warnings)
}

fn convert(f: Field<'_>, flavor: Flavor, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    f.only_keys(&["apiVersion", "kind", "metadata", "spec", "status"])?;
    let meta = metadata(f, &[])?;
    if flavor == Flavor::Baseline && meta.name != "default" {
        return Err(f.require("metadata", |m| {
            m.require("name", |n| Ok(n.error("a BaselineAdminNetworkPolicy must be named default (one per cluster)")))
        })?);
    }
    let spec = f.with("spec", |s| s.map(|s| convert_spec(s, flavor, &meta.name, warnings)).transpose())?;
    let Some((tier, order, selector, ingress, egress)) = spec else { return Err(f.error("missing spec")) };
    // Calico's types: Ingress if any ingress rule survived, Egress if any egress rule did; none at all
    // reads as both in Felix (its tiers default to Pass, so that changes no verdict).
    let neither = ingress.is_empty() && egress.is_empty();
    Ok(Resource::Policy(std::sync::Arc::new(Policy {
        id: PolicyId { kind: flavor.kind(), namespace: None, name: meta.name.clone() },
        tier: tier.to_string(),
        order: Some(order),
        selector,
        applies_ingress: !ingress.is_empty() || neither,
        applies_egress: !egress.is_empty() || neither,
        ingress,
        egress,
        do_not_track: false,
        pre_dnat: false,
        apply_on_forward: false,
    })))
}

type Converted = (&'static str, f64, Selector, Vec<Rule>, Vec<Rule>);

fn convert_spec(
    spec: Field<'_>,
    flavor: Flavor,
    name: &str,
    warnings: &mut Vec<String>,
) -> Result<Converted, LoadError> {
    let (tier, order) = match flavor {
        Flavor::Cluster => {
            spec.only_keys(&["tier", "priority", "subject", "ingress", "egress"])?;
            let tier = spec.require("tier", |t| match t.str()? {
                "Admin" => Ok(KUBE_ADMIN_TIER),
                "Baseline" => Ok(KUBE_BASELINE_TIER),
                other => Err(t.error(format!("unknown tier '{other}' (expected Admin or Baseline)"))),
            })?;
            (tier, priority(spec)?)
        }
        Flavor::Admin => {
            spec.only_keys(&["priority", "subject", "ingress", "egress"])?;
            (ADMIN_NETWORK_POLICY_TIER, priority(spec)?)
        }
        Flavor::Baseline => {
            spec.only_keys(&["subject", "ingress", "egress"])?;
            (BASELINE_ADMIN_NETWORK_POLICY_TIER, 1000.0)
        }
    };
    let selector = spec.require("subject", subject)?;
    let rules = |key: &str, egress: bool, warnings: &mut Vec<String>| {
        spec.with(key, |list| {
            let Some(list) = list else { return Ok(Vec::new()) };
            let per_rule = list.each(|r| convert_rule(r, flavor, egress, name, warnings))?;
            if per_rule.len() > flavor.max_items() {
                return Err(list.error(format!("at most {} rules", flavor.max_items())));
            }
            Ok(per_rule.into_iter().flatten().collect::<Vec<Rule>>())
        })
    };
    let ingress = rules("ingress", false, warnings)?;
    let egress = rules("egress", true, warnings)?;
    Ok((tier, order, selector, ingress, egress))
}

/// `spec.priority`, 0–1000 (an omitted priority is 0, as Calico reads it).
fn priority(spec: Field<'_>) -> Result<f64, LoadError> {
    Ok(spec.with("priority", |p| p.map(|p| p.uint(1000)).transpose())?.unwrap_or(0) as f64)
}

/// The term Calico adds to every pod selector: it keeps host endpoints out.
fn k8s_pods() -> Selector {
    Selector::from_expr(Expr::Eq(ORCHESTRATOR_LABEL.into(), "k8s".into()))
}

/// A Kubernetes namespace selector as Calico converts it: empty selects every namespace.
fn namespaces(f: Field<'_>) -> Result<Selector, LoadError> {
    Ok(label_selector(f)?.unwrap_or_else(Selector::all))
}

/// `{namespaceSelector, podSelector}`: the namespace part (omitted: every namespace) and the pod part with
/// the orchestrator term.
fn namespaced_pod(f: Field<'_>) -> Result<(Selector, Selector), LoadError> {
    f.only_keys(&["namespaceSelector", "podSelector"])?;
    let ns = f.with("namespaceSelector", |n| n.map(namespaces).transpose())?.unwrap_or_else(Selector::all);
    let pods = f.require("podSelector", label_selector)?;
    let pods = match pods {
        Some(p) => k8s_pods().and(p),
        None => k8s_pods(),
    };
    Ok((ns, pods))
}

/// `spec.subject`: exactly one of `namespaces` and `pods`, as a GlobalNetworkPolicy's selector and
/// namespaceSelector, which Felix combines (so a subject only ever selects pods).
fn subject(f: Field<'_>) -> Result<Selector, LoadError> {
    f.only_keys(&["namespaces", "pods"])?;
    let ns = f.with("namespaces", |n| n.map(namespaces).transpose())?;
    let pods = f.with("pods", |p| p.map(namespaced_pod).transpose())?;
    let (ns_part, pod_part) = match (ns, pods) {
        (Some(ns), None) => (ns, k8s_pods()),
        (None, Some(p)) => p,
        _ => return Err(f.error("a subject sets exactly one of namespaces and pods")),
    };
    Ok(target_selector(Some(pod_part), None, Some(ns_part), None))
}

/// One peer: its selector or CIDRs, or the field Calico cannot convert.
enum Peer {
    Entity(Box<EntityRule>),
    Unsupported(&'static str),
}

fn peer(f: Field<'_>, flavor: Flavor, egress: bool) -> Result<Peer, LoadError> {
    let mut keys = vec!["namespaces", "pods"];
    if egress {
        keys.extend(["nodes", "networks"]);
        if flavor == Flavor::Cluster {
            keys.push("domainNames");
        }
    }
    f.only_keys(&keys)?;
    let set = f.entries()?.len();
    if set != 1 {
        return Err(f.error(format!("a peer sets exactly one of {}", keys.join(", "))));
    }
    if let Some(ns) = f.with("namespaces", |n| n.map(namespaces).transpose())? {
        // As a GlobalNetworkPolicy rule with only a namespaceSelector: any namespaced entity there, network
        // sets of the namespaces included (semantics §2.2).
        let selector = Some(prefix_namespace_selector(&ns));
        return Ok(Peer::Entity(Box::new(EntityRule { selector, ..EntityRule::default() })));
    }
    if let Some((ns, pods)) = f.with("pods", |p| p.map(namespaced_pod).transpose())? {
        let selector = prefix_namespace_selector(&ns).and(pods);
        return Ok(Peer::Entity(Box::new(EntityRule { selector: Some(selector), ..EntityRule::default() })));
    }
    if let Some(nets) = f.with("networks", |n| {
        n.map(|n| {
            let nets = n.each(|c| {
                let text = c.str()?;
                if text.len() > 43 {
                    return Err(c.error("a CIDR is at most 43 characters"));
                }
                parse_net(c)
            })?;
            if nets.is_empty() || nets.len() > 25 {
                return Err(n.error("networks holds 1 to 25 CIDRs"));
            }
            Ok(nets)
        })
        .transpose()
    })? {
        let nets: Vec<IpNet> = nets;
        return Ok(Peer::Entity(Box::new(EntityRule { nets, ..EntityRule::default() })));
    }
    if f.with("nodes", |n| Ok(n.is_some()))? {
        return Ok(Peer::Unsupported("nodes"));
    }
    Ok(Peer::Unsupported("domainNames"))
}

/// What one `protocols` / `ports` entry asks for.
enum PortEntry {
    /// Every protocol and port (Calico v3.29–v3.31's reading of a v1alpha1 `namedPort`).
    Everything,
    /// A protocol with one port or range, or every port of it (`None`).
    Numbered(Protocol, Option<Port>),
    /// A named port, with no protocol.
    Named(String),
}

fn port_number(f: Field<'_>) -> Result<u16, LoadError> {
    let v = f.uint(65535)?;
    if v == 0 {
        return Err(f.error("a port is 1 to 65535"));
    }
    Ok(v as u16)
}

fn port_range(f: Field<'_>, extra: &[&str]) -> Result<Port, LoadError> {
    let mut keys = vec!["start", "end"];
    keys.extend_from_slice(extra);
    f.only_keys(&keys)?;
    let start = f.require("start", port_number)?;
    let end = f.require("end", port_number)?;
    if start >= end {
        return Err(f.error(format!("a port range's start must be below its end ({start} >= {end})")));
    }
    Ok(Port::Range(start, end))
}

/// A v1alpha2 `protocols` entry: exactly one of `tcp`, `udp`, `sctp` (each with an optional
/// `destinationPort` of `number` or `range`) and `destinationNamedPort`.
fn protocol_entry(f: Field<'_>) -> Result<PortEntry, LoadError> {
    f.only_keys(&["tcp", "udp", "sctp", "destinationNamedPort"])?;
    if f.entries()?.len() != 1 {
        return Err(f.error("a protocols entry sets exactly one of tcp, udp, sctp and destinationNamedPort"));
    }
    if let Some(name) = f.with("destinationNamedPort", |n| n.map(|n| n.string()).transpose())? {
        // A named port stays a name even when it looks like a number (Calico's test: "8080").
        return Ok(PortEntry::Named(name));
    }
    for (key, protocol) in [("tcp", Protocol::TCP), ("udp", Protocol::UDP), ("sctp", Protocol::SCTP)] {
        let entry = f.with(key, |p| {
            p.map(|p| {
                p.only_keys(&["destinationPort"])?;
                p.with("destinationPort", |d| {
                    d.map(|d| {
                        d.only_keys(&["number", "range"])?;
                        if d.entries()?.len() != 1 {
                            return Err(d.error("a destinationPort sets exactly one of number and range"));
                        }
                        match d.with("number", |n| n.map(port_number).transpose())? {
                            Some(n) => Ok(Port::Range(n, n)),
                            None => d.require("range", |r| port_range(r, &[])),
                        }
                    })
                    .transpose()
                })
            })
            .transpose()
        })?;
        if let Some(port) = entry {
            return Ok(PortEntry::Numbered(protocol, port));
        }
    }
    Err(f.error("a protocols entry sets exactly one of tcp, udp, sctp and destinationNamedPort"))
}

/// A v1alpha1 `ports` entry: exactly one of `portNumber`, `portRange` (protocol default TCP) and
/// `namedPort`.
fn v1alpha1_port(f: Field<'_>, rule_path: &str, warnings: &mut Vec<String>) -> Result<PortEntry, LoadError> {
    f.only_keys(&["portNumber", "portRange", "namedPort"])?;
    if f.entries()?.len() != 1 {
        return Err(f.error("a ports entry sets exactly one of portNumber, portRange and namedPort"));
    }
    let protocol = |p: Field<'_>| {
        p.with("protocol", |x| {
            x.map(|x| match x.str()? {
                "TCP" => Ok(Protocol::TCP),
                "UDP" => Ok(Protocol::UDP),
                "SCTP" => Ok(Protocol::SCTP),
                other => Err(x.error(format!("unknown protocol '{other}' (expected TCP, UDP or SCTP)"))),
            })
            .transpose()
        })
        .map(|p| p.unwrap_or(Protocol::TCP))
    };
    if let Some(entry) = f.with("portNumber", |p| {
        p.map(|p| {
            p.only_keys(&["protocol", "port"])?;
            let port = p.require("port", port_number)?;
            Ok(PortEntry::Numbered(protocol(p)?, Some(Port::Range(port, port))))
        })
        .transpose()
    })? {
        return Ok(entry);
    }
    if let Some(entry) = f.with("portRange", |p| {
        p.map(|p| Ok(PortEntry::Numbered(protocol(p)?, Some(port_range(p, &["protocol"])?)))).transpose()
    })? {
        return Ok(entry);
    }
    warnings.push(format!(
        "{rule_path}: namedPort is not converted by Calico v3.29–v3.31 (its conversion has no named ports): the rule \
         matches every protocol and port, as Felix enforced it"
    ));
    Ok(PortEntry::Everything)
}

/// Calico's grouping of a rule's ports by protocol (`unpackCNPProtocols` / `unpackANPPorts`): one group per
/// protocol, sorted by its name with the named ports' group (no protocol) first; an entry for every port of
/// a protocol widens its group for good; an entry for everything leaves one group matching everything.
fn port_groups(entries: Vec<PortEntry>) -> Vec<(Option<Protocol>, Vec<Port>)> {
    let mut groups: BTreeMap<String, (Option<Protocol>, Option<Vec<Port>>)> = BTreeMap::new();
    for e in entries {
        let (key, protocol, port) = match e {
            PortEntry::Everything => {
                groups.clear();
                groups.insert(String::new(), (None, None));
                break;
            }
            PortEntry::Numbered(p, port) => (p.to_string(), Some(p), port),
            PortEntry::Named(name) => (String::new(), None, Some(Port::Named(name))),
        };
        let slot = groups.entry(key).or_insert((protocol, Some(Vec::new())));
        match (&mut slot.1, port) {
            (_, None) => slot.1 = None,
            (Some(list), Some(p)) => {
                if !list.contains(&p) {
                    list.push(p);
                }
            }
            (None, Some(_)) => {}
        }
    }
    if groups.is_empty() {
        return vec![(None, Vec::new())];
    }
    groups.into_values().map(|(p, ports)| (p, ports.unwrap_or_default())).collect()
}

/// One rule as Calico rules: one per (protocol group × peer), protocol-major; or its fail-closed stand-in.
fn convert_rule(
    f: Field<'_>,
    flavor: Flavor,
    egress: bool,
    policy: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Rule>, LoadError> {
    let peers_key = if egress { "to" } else { "from" };
    let ports_key = if flavor == Flavor::Cluster { "protocols" } else { "ports" };
    f.only_keys(&["name", "action", peers_key, ports_key])?;
    f.with("name", |n| match n {
        Some(n) if n.str()?.len() > 100 => Err(n.error("a rule name is at most 100 characters")),
        _ => Ok(()),
    })?;
    let action = f.require("action", |a| {
        let text = a.str()?;
        let (allowed, found): (&[&str], Option<Action>) = match flavor {
            Flavor::Cluster => (
                &["Accept", "Deny", "Pass"],
                match text {
                    "Accept" => Some(Action::Allow),
                    "Deny" => Some(Action::Deny),
                    "Pass" => Some(Action::Pass),
                    _ => None,
                },
            ),
            Flavor::Admin => (
                &["Allow", "Deny", "Pass"],
                match text {
                    "Allow" => Some(Action::Allow),
                    "Deny" => Some(Action::Deny),
                    "Pass" => Some(Action::Pass),
                    _ => None,
                },
            ),
            Flavor::Baseline => (
                &["Allow", "Deny"],
                match text {
                    "Allow" => Some(Action::Allow),
                    "Deny" => Some(Action::Deny),
                    _ => None,
                },
            ),
        };
        found.ok_or_else(|| a.error(format!("unknown action '{text}' (expected {})", allowed.join(", "))))
    })?;
    let peers = f.require(peers_key, |p| {
        let peers = p.each(|peer_f| peer(peer_f, flavor, egress))?;
        if peers.is_empty() || peers.len() > flavor.max_items() {
            return Err(p.error(format!("{peers_key} holds 1 to {} peers", flavor.max_items())));
        }
        Ok(peers)
    })?;
    let rule_path = format!("{}: {} {}", flavor.kind().name(), policy, f.path());
    let entries = f.with(ports_key, |p| {
        p.map(|p| {
            let entries = match flavor {
                Flavor::Cluster => p.each(protocol_entry)?,
                _ => p.each(|e| v1alpha1_port(e, &rule_path, warnings))?,
            };
            if entries.is_empty() || entries.len() > flavor.max_items() {
                return Err(p.error(format!("{ports_key} holds 1 to {} entries", flavor.max_items())));
            }
            Ok(entries)
        })
        .transpose()
    })?;
    let named = entries.as_ref().is_some_and(|e| e.iter().any(|e| matches!(e, PortEntry::Named(_))));
    let off_cluster = peers.iter().any(|p| match p {
        Peer::Entity(e) => !e.nets.is_empty(),
        Peer::Unsupported(_) => true,
    });
    if named && off_cluster {
        return Err(f.error("a rule with networks, nodes or domainNames peers cannot use named ports"));
    }
    if let Some(field) = peers.iter().find_map(|p| match p {
        Peer::Unsupported(field) => Some(*field),
        Peer::Entity(_) => None,
    }) {
        // Calico cannot convert the rule: it fails closed.
        let stand_in = match (flavor, action) {
            (_, Action::Deny) | (Flavor::Cluster | Flavor::Admin, Action::Pass) => Some(Rule::new(Action::Deny)),
            _ => None,
        };
        warnings.push(format!(
            "{rule_path}: Calico cannot convert a rule with a {field} peer; {}",
            if stand_in.is_some() {
                "it fails closed: the rule becomes a Deny of everything"
            } else {
                "it leaves the rule out"
            }
        ));
        return Ok(stand_in.into_iter().collect());
    }
    let groups = port_groups(entries.unwrap_or_default());
    let mut rules = Vec::new();
    for (protocol, ports) in &groups {
        for p in &peers {
            let Peer::Entity(peer) = p else { continue };
            let mut rule = Rule::new(action);
            rule.protocol = *protocol;
            if egress {
                rule.destination = EntityRule { ports: ports.clone(), ..(**peer).clone() };
            } else {
                rule.source = (**peer).clone();
                rule.destination = EntityRule { ports: ports.clone(), ..EntityRule::default() };
            }
            rules.push(rule);
        }
    }
    Ok(rules)
}
