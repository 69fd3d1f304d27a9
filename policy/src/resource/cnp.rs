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
use super::meta::{metadata, target_selector};
use super::rule::{parse_net, prefix_namespace_selector, EntityRule, Port, Protocol, Rule, ORCHESTRATOR_LABEL};
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
    let kind = flavor.kind().applied_as().unwrap_or(flavor.kind().name());
    let rule_path = format!("{kind} {policy}, {}", f.path());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{load_text, Labels};
    use crate::yaml::Origin;

    fn load(yaml: &str) -> (Policy, Vec<String>) {
        let docs = load_text(yaml, &Origin::file("cnp.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let warnings = docs[0].warnings.clone();
        match &docs[0].resource {
            Resource::Policy(p) => ((**p).clone(), warnings),
            other => panic!("{other:?}"),
        }
    }

    fn error(yaml: &str) -> String {
        load_text(yaml, &Origin::file("cnp.yaml")).expect_err("refused").to_string()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const HEAD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n";

    /// Calico's "basic" conversion: tier, order, a subject that selects pods of the namespace and never a
    /// host endpoint, one Accept rule with a namespaces peer on TCP 80.
    #[test]
    fn admin_subject_and_rule() {
        let (p, _) = load(&format!(
            "{HEAD}metadata: {{name: basic}}\nspec:\n  tier: Admin\n  priority: 100\n  subject:\n    namespaces: {{matchLabels: {{label: value}}}}\n  ingress:\n    - name: first\n      action: Accept\n      from: [{{namespaces: {{matchLabels: {{k: v}}}}}}]\n      protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]\n"
        ));
        assert_eq!((p.tier.as_str(), p.order, p.id.kind.short_name()), (KUBE_ADMIN_TIER, Some(100.0), "kcnp"));
        assert!(p.applies_ingress && !p.applies_egress);
        let pod = labels(&[("projectcalico.org/orchestrator", "k8s"), ("pcns.label", "value")]);
        assert!(p.selector.matches(&pod));
        let hep = labels(&[("pcns.label", "value")]);
        assert!(!p.selector.matches(&hep), "the orchestrator term keeps host endpoints out");
        assert_eq!(p.ingress.len(), 1);
        let r = &p.ingress[0];
        assert_eq!(
            (r.action, r.protocol, &r.destination.ports),
            (Action::Allow, Some(Protocol::TCP), &vec![Port::Range(80, 80)])
        );
        let peer = r.source.selector.as_ref().expect("a namespace selector");
        assert!(peer.matches(&labels(&[("pcns.k", "v")])) && !peer.matches(&labels(&[("k", "v")])));
    }

    /// Calico's "multiple peers and ports": protocol-major (named ports without a protocol first, then
    /// TCP, then UDP), peer-minor; a numeric-looking named port stays a name.
    #[test]
    fn rules_are_protocol_major_and_peer_minor() {
        let (p, _) = load(&format!(
            "{HEAD}metadata: {{name: multi}}\nspec:\n  tier: Admin\n  priority: 600\n  subject: {{namespaces: {{}}}}\n  ingress:\n    - action: Pass\n      from: [{{namespaces: {{matchLabels: {{k: v}}}}}}, {{pods: {{podSelector: {{matchLabels: {{k2: v2}}}}}}}}]\n      protocols:\n        - tcp: {{destinationPort: {{number: 80}}}}\n        - udp: {{destinationPort: {{range: {{start: 20, end: 30}}}}}}\n        - destinationNamedPort: http-port\n        - destinationNamedPort: \"8080\"\n"
        ));
        let shape: Vec<(Option<Protocol>, Vec<Port>)> =
            p.ingress.iter().map(|r| (r.protocol, r.destination.ports.clone())).collect();
        let named = vec![Port::Named("http-port".into()), Port::Named("8080".into())];
        assert_eq!(
            shape,
            vec![
                (None, named.clone()),
                (None, named),
                (Some(Protocol::TCP), vec![Port::Range(80, 80)]),
                (Some(Protocol::TCP), vec![Port::Range(80, 80)]),
                (Some(Protocol::UDP), vec![Port::Range(20, 30)]),
                (Some(Protocol::UDP), vec![Port::Range(20, 30)]),
            ]
        );
        assert!(p.ingress.iter().all(|r| r.action == Action::Pass));
        let pods_peer = p.ingress[1].source.selector.as_ref().unwrap();
        let pod =
            labels(&[("projectcalico.org/orchestrator", "k8s"), ("projectcalico.org/namespace", "x"), ("k2", "v2")]);
        assert!(pods_peer.matches(&pod), "an omitted namespaceSelector is every namespace");
        assert!(!pods_peer.matches(&labels(&[("projectcalico.org/namespace", "x"), ("k2", "v2")])));
    }

    /// A nodes or domainNames peer: Calico fails closed (Deny and Pass become a Deny of everything, Accept
    /// is left out), with a warning each; networks keep both families and lose their host bits.
    #[test]
    fn unconvertible_peers_fail_closed() {
        let (p, warnings) = load(&format!(
            "{HEAD}metadata: {{name: closed}}\nspec:\n  tier: Baseline\n  subject: {{pods: {{podSelector: {{}}}}}}\n  egress:\n    - {{action: Accept, to: [{{nodes: {{}}}}]}}\n    - {{action: Pass, to: [{{nodes: {{matchLabels: {{a: b}}}}}}]}}\n    - {{action: Deny, to: [{{namespaces: {{}}}}, {{domainNames: [example.com]}}]}}\n    - {{action: Accept, to: [{{networks: [10.1.2.3/8, \"2001:db8::1/32\"]}}]}}\n"
        ));
        assert_eq!((p.tier.as_str(), p.order), (KUBE_BASELINE_TIER, Some(0.0)));
        assert_eq!(p.egress.len(), 3, "{:?}", p.egress);
        assert!(p.egress[..2].iter().all(|r| *r == Rule::new(Action::Deny)));
        let nets: Vec<String> = p.egress[2].destination.nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("nodes peer") && warnings[0].contains("leaves the rule out"), "{warnings:?}");
        assert!(warnings[2].contains("domainNames") && warnings[2].contains("fails closed"), "{warnings:?}");
        assert!(!p.applies_ingress && p.applies_egress);
    }

    /// What the API server's validation refuses is refused, naming the field.
    #[test]
    fn crd_validation() {
        let base = format!("{HEAD}metadata: {{name: bad}}\nspec:\n  tier: Admin\n  subject: {{namespaces: {{}}}}\n");
        let e =
            error(&format!("{HEAD}metadata: {{name: bad}}\nspec:\n  tier: Middle\n  subject: {{namespaces: {{}}}}\n"));
        assert!(e.contains("spec.tier: unknown tier 'Middle' (expected Admin or Baseline)"), "{e}");
        let e = error(&format!("{HEAD}metadata: {{name: bad}}\nspec:\n  tier: Admin\n  subject: {{}}\n"));
        assert!(e.contains("spec.subject: a subject sets exactly one of namespaces and pods"), "{e}");
        let e = error(&format!("{base}  priority: 1001\n"));
        assert!(e.contains("spec.priority: expected a whole number from 0 to 1000"), "{e}");
        let e = error(&format!("{base}  ingress: [{{action: Allow, from: [{{namespaces: {{}}}}]}}]\n"));
        assert!(e.contains("spec.ingress[0].action: unknown action 'Allow' (expected Accept, Deny, Pass)"), "{e}");
        let e = error(&format!(
            "{base}  ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{udp: {{destinationPort: {{range: {{start: 40, end: 20}}}}}}}}]}}]\n"
        ));
        assert!(e.contains("destinationPort.range: a port range's start must be below its end"), "{e}");
        let e = error(&format!("{base}  egress: [{{action: Deny, to: [{{networks: [1.1.1.1/66]}}]}}]\n"));
        assert!(e.contains("spec.egress[0].to[0].networks[0]:"), "{e}");
        let e = error(&format!(
            "{base}  egress: [{{action: Deny, to: [{{networks: [10.0.0.0/8]}}], protocols: [{{destinationNamedPort: http}}]}}]\n"
        ));
        assert!(e.contains("cannot use named ports"), "{e}");
        let e = error(&format!(
            "{base}  ingress: [{{action: Deny, from: [{{namespaces: {{}}, pods: {{podSelector: {{}}}}}}]}}]\n"
        ));
        assert!(e.contains("a peer sets exactly one of namespaces, pods"), "{e}");
    }

    /// v1alpha1 as Calico v3.29–v3.31 converted it: its own tiers, Allow passed through, the BANP at order
    /// 1000 and named `default`, a namedPort matching everything (with a warning), TCP by default.
    #[test]
    fn v1alpha1_admin_and_baseline() {
        let (p, warnings) = load(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec:\n  priority: 7\n  subject: {namespaces: {}}\n  ingress:\n    - action: Allow\n      from: [{namespaces: {}}]\n      ports: [{portNumber: {port: 80}}, {namedPort: http}]\n    - action: Pass\n      from: [{pods: {namespaceSelector: {}, podSelector: {}}}]\n      ports: [{portRange: {protocol: UDP, start: 1000, end: 2000}}]\n",
        );
        assert_eq!((p.tier.as_str(), p.order), (ADMIN_NETWORK_POLICY_TIER, Some(7.0)));
        assert_eq!(p.id.felix_name(), "kanp.adminnetworkpolicy.anp");
        assert_eq!((p.ingress[0].action, p.ingress[0].protocol), (Action::Allow, None));
        assert!(p.ingress[0].destination.ports.is_empty(), "a namedPort made the rule match every port");
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            (p.ingress[1].protocol, &p.ingress[1].destination.ports),
            (Some(Protocol::UDP), &vec![Port::Range(1000, 2000)])
        );
        let (b, _) = load(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{nodes: {}}]}, {action: Allow, to: [{networks: [0.0.0.0/0]}], ports: [{portNumber: {port: 53, protocol: UDP}}]}]\n",
        );
        assert_eq!(
            (b.tier.as_str(), b.order, b.id.felix_name().as_str()),
            (BASELINE_ADMIN_NETWORK_POLICY_TIER, Some(1000.0), "kbanp.baselineadminnetworkpolicy.default")
        );
        assert_eq!(b.egress[0], Rule::new(Action::Deny));
        assert_eq!(b.egress[1].protocol, Some(Protocol::UDP));
        let e = error("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: other}\nspec: {subject: {namespaces: {}}}\n");
        assert!(e.contains("metadata.name: a BaselineAdminNetworkPolicy must be named default"), "{e}");
        let e = error("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{namespaces: {}}]}]\n");
        assert!(e.contains("unknown action 'Pass' (expected Allow, Deny)"), "{e}");
    }
}
