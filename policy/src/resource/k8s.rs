//! Kubernetes `networking.k8s.io/v1` NetworkPolicy, converted exactly as Calico converts it (semantics §1.3).

use std::collections::BTreeSet;

use super::meta::{metadata, target_selector};
use super::rule::{parse_net, prefix_namespace_selector, EntityRule, Port, Protocol, Rule};
use super::rule::{NAMESPACE_LABEL, ORCHESTRATOR_LABEL};
use super::{Action, Policy, PolicyId, PolicyKind, Resource, DEFAULT_TIER};
use crate::selector::{Expr, Selector};
use crate::yaml::{Field, LoadError};

/// The order Calico gives every converted Kubernetes policy.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

pub(super) fn parse(f: Field<'_>, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    convert(f, PolicyKind::KubernetesNetworkPolicy, warnings)
}

pub(super) fn parse_staged(f: Field<'_>, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    convert(f, PolicyKind::StagedKubernetesNetworkPolicy, warnings)
}

fn convert(f: Field<'_>, kind: PolicyKind, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    f.only_keys(&["apiVersion", "kind", "metadata", "spec", "status"])?;
    let meta = metadata(f, &[])?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    f.with("spec", |spec| {
        let spec = spec.ok_or_else(|| f.error("missing spec"))?;
        let mut keys = vec!["podSelector", "policyTypes", "ingress", "egress"];
        if kind.is_staged() {
            keys.push("stagedAction");
        }
        spec.only_keys(&keys)?;
        let pod_selector = spec.with("podSelector", |p| p.map(label_selector).transpose())?.flatten();
        let policy_types = spec.with("policyTypes", |t| {
            t.map(|t| {
                t.each(|ty| match ty.str()? {
                    "Ingress" => Ok(true),
                    "Egress" => Ok(false),
                    other => Err(ty.error(format!("unknown policy type '{other}' (expected Ingress or Egress)"))),
                })
            })
            .transpose()
        })?;
        let ingress = spec.with("ingress", |r| convert_rules(r, &namespace, true, warnings))?;
        let egress = spec.with("egress", |r| convert_rules(r, &namespace, false, warnings))?;
        let (applies_ingress, applies_egress) = match policy_types {
            Some(types) if !types.is_empty() => (types.contains(&true), types.contains(&false)),
            _ => {
                // Legacy behaviour: no policyTypes means Ingress only, even with egress rules.
                if !egress.is_empty() {
                    warnings.push(format!(
                        "NetworkPolicy {namespace}/{}: policyTypes is empty, so its egress rules are not enforced",
                        meta.name
                    ));
                }
                (true, false)
            }
        };
        let mut selector = Selector::from_expr(Expr::Eq(ORCHESTRATOR_LABEL.into(), "k8s".into()));
        if let Some(p) = pod_selector {
            selector = selector.and(p);
        }
        Ok(Resource::Policy(std::sync::Arc::new(Policy {
            id: PolicyId { kind, namespace: Some(namespace.clone()), name: meta.name.clone() },
            tier: DEFAULT_TIER.into(),
            order: Some(K8S_POLICY_ORDER),
            selector: target_selector(Some(selector), Some(&namespace), None, None),
            applies_ingress,
            applies_egress,
            ingress: if applies_ingress { ingress } else { Vec::new() },
            egress: if applies_egress { egress } else { Vec::new() },
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
        })))
    })
}

/// A Kubernetes LabelSelector as a Calico selector; `None` for the empty selector (everything).
pub(super) fn label_selector(f: Field<'_>) -> Result<Option<Selector>, LoadError> {
    f.only_keys(&["matchLabels", "matchExpressions"])?;
    let mut terms: Vec<Expr> = Vec::new();
    // matchLabels come out as `k == 'v'` terms sorted by key (a BTreeMap iterates sorted).
    let labels = f.with("matchLabels", |m| m.map(|m| m.string_map()).transpose())?.unwrap_or_default();
    for (k, v) in labels {
        terms.push(Expr::Eq(k, v));
    }
    let exprs = f.with("matchExpressions", |m| {
        m.map(|m| {
            m.each(|e| {
                e.only_keys(&["key", "operator", "values"])?;
                let key = e.require("key", |k| k.string())?;
                let values: BTreeSet<String> =
                    e.with("values", |v| v.map(|v| v.strings()).transpose())?.unwrap_or_default().into_iter().collect();
                e.require("operator", |op| {
                    let need_values = |yes: bool| {
                        if yes == values.is_empty() {
                            Err(op.error(if yes {
                                "operators In and NotIn need values"
                            } else {
                                "operators Exists and DoesNotExist take no values"
                            }))
                        } else {
                            Ok(())
                        }
                    };
                    match op.str()? {
                        "In" => need_values(true).map(|_| Expr::In(key.clone(), values.clone())),
                        "NotIn" => need_values(true).map(|_| Expr::NotIn(key.clone(), values.clone())),
                        "Exists" => need_values(false).map(|_| Expr::Has(key.clone())),
                        "DoesNotExist" => need_values(false).map(|_| Expr::Not(Box::new(Expr::Has(key.clone())))),
                        other => Err(op
                            .error(format!("unknown operator '{other}' (expected In, NotIn, Exists or DoesNotExist)"))),
                    }
                })
            })
        })
        .transpose()
    })?;
    terms.extend(exprs.unwrap_or_default());
    Ok(terms.into_iter().map(Selector::from_expr).reduce(Selector::and))
}

/// One Kubernetes rule becomes one Calico Allow rule per (peer × protocol).
fn convert_rules(
    list: Option<Field<'_>>,
    namespace: &str,
    ingress: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<Rule>, LoadError> {
    let Some(list) = list else { return Ok(Vec::new()) };
    let per_rule = list.each(|r| {
        let peers_key = if ingress { "from" } else { "to" };
        r.only_keys(&[peers_key, "ports"])?;
        let peers = r.with(peers_key, |p| p.map(|p| p.each(|peer| convert_peer(peer, namespace))).transpose())?;
        let peers = match peers {
            Some(p) if !p.is_empty() => p,
            _ => vec![EntityRule::default()],
        };
        let groups = match r.with("ports", |p| p.map(port_groups).transpose())? {
            Some(Some(groups)) => groups,
            Some(None) => {
                warnings.push(format!("a rule with an unusable port was dropped at {}", r.path()));
                return Ok(Vec::new());
            }
            None => vec![(None, Vec::new())],
        };
        let mut rules = Vec::new();
        for peer in &peers {
            for (protocol, ports) in &groups {
                let mut rule = Rule::new(Action::Allow);
                rule.protocol = *protocol;
                if ingress {
                    rule.source = peer.clone();
                    rule.destination = EntityRule { ports: ports.clone(), ..EntityRule::default() };
                } else {
                    rule.destination = EntityRule { ports: ports.clone(), ..peer.clone() };
                }
                rules.push(rule);
            }
        }
        Ok(rules)
    })?;
    Ok(per_rule.into_iter().flatten().collect())
}

/// A peer of a Kubernetes rule as a Calico entity rule, namespace-scoped as an NP rule is (semantics §1.3).
fn convert_peer(f: Field<'_>, namespace: &str) -> Result<EntityRule, LoadError> {
    f.only_keys(&["podSelector", "namespaceSelector", "ipBlock"])?;
    if let Some((nets, not_nets)) = f.with("ipBlock", |b| {
        b.map(|b| {
            b.only_keys(&["cidr", "except"])?;
            let cidr = b.require("cidr", parse_net)?;
            let except = b.with("except", |e| e.map(|e| e.each(parse_net)).transpose())?.unwrap_or_default();
            Ok((vec![cidr], except))
        })
        .transpose()
    })? {
        return Ok(EntityRule { nets, not_nets, ..EntityRule::default() });
    }
    let pod = f.with("podSelector", |p| p.map(label_selector).transpose())?;
    let ns = f.with("namespaceSelector", |n| n.map(label_selector).transpose())?;
    let k8s = Selector::from_expr(Expr::Eq(ORCHESTRATOR_LABEL.into(), "k8s".into()));
    let selector = match (pod, ns) {
        (None, None) => return Ok(EntityRule::default()),
        (pod, None) => {
            let own = Selector::from_expr(Expr::Eq(NAMESPACE_LABEL.into(), namespace.to_string()));
            let sel = match pod.flatten() {
                Some(p) => k8s.and(p),
                None => k8s,
            };
            own.and(sel)
        }
        (pod, Some(ns)) => {
            // A namespaceSelector replaces the own-namespace scope; `{}` means every namespace.
            let ns_sel = prefix_namespace_selector(&ns.unwrap_or_else(Selector::all));
            let sel = match pod.flatten() {
                Some(p) => k8s.and(p),
                None => k8s,
            };
            ns_sel.and(sel)
        }
    };
    Ok(EntityRule { selector: Some(selector), ..EntityRule::default() })
}

/// Groups a rule's ports by protocol, sorted by protocol name. `None` if a port is unusable (Calico then
/// drops the rule).
#[allow(clippy::type_complexity)]
fn port_groups(f: Field<'_>) -> Result<Option<Vec<(Option<Protocol>, Vec<Port>)>>, LoadError> {
    let entries = f.each(|p| {
        p.only_keys(&["protocol", "port", "endPort"])?;
        let protocol = match p.with("protocol", |x| x.map(|x| x.string()).transpose())? {
            None => Some(Protocol::TCP),
            Some(name) => match name.as_str() {
                "TCP" => Some(Protocol::TCP),
                "UDP" => Some(Protocol::UDP),
                "SCTP" => Some(Protocol::SCTP),
                _ => None,
            },
        };
        let port = p.with("port", |x| {
            x.map(|x| {
                let text = x.str()?;
                Ok(match text.parse::<u16>() {
                    Ok(n) => Some(Port::Range(n, n)),
                    Err(_) if !text.is_empty() && !text.chars().all(|c| c.is_ascii_digit()) => {
                        Some(Port::Named(text.to_string()))
                    }
                    Err(_) => None,
                })
            })
            .transpose()
        })?;
        let end = p.with("endPort", |x| x.map(|x| x.uint(65535).map(|v| v as u16)).transpose())?;
        Ok((protocol, port, end))
    })?;
    let mut groups: Vec<(Protocol, Option<Vec<Port>>)> = Vec::new();
    for (protocol, port, end) in entries {
        let Some(protocol) = protocol else { return Ok(None) };
        let port = match (port, end) {
            (None, None) => None,
            (Some(None), _) => return Ok(None),
            (Some(Some(Port::Range(lo, _))), Some(hi)) if hi >= lo => Some(Port::Range(lo, hi)),
            (Some(Some(p)), None) => Some(p),
            _ => return Ok(None),
        };
        let index = match groups.iter().position(|(p, _)| *p == protocol) {
            Some(i) => i,
            None => {
                groups.push((protocol, Some(Vec::new())));
                groups.len() - 1
            }
        };
        let slot = &mut groups[index].1;
        match (slot.as_mut(), port) {
            // An entry meaning "all ports" absorbs the specific ports of its protocol.
            (_, None) => *slot = None,
            (Some(list), Some(p)) => {
                if !list.contains(&p) {
                    list.push(p)
                }
            }
            (None, Some(_)) => {}
        }
    }
    groups.sort_by_key(|(p, _)| p.to_string());
    Ok(Some(groups.into_iter().map(|(p, ports)| (Some(p), ports.unwrap_or_default())).collect()))
}
