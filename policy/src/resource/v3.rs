//! `projectcalico.org/v3` resources (and the same schema under `crd.projectcalico.org/v1`).

use super::meta::{metadata, target_selector};
use super::rule::{parse_rules, parse_selector, Dialect, RuleScope, NAMESPACE_LABEL};
use super::{
    k8s, HostEndpoint, Labels, NamedPort, NetworkSet, Policy, PolicyId, PolicyKind, Profile, Protocol, Resource, Tier,
    TierDefault, DEFAULT_TIER,
};
use crate::yaml::{Field, LoadError};

pub(super) fn parse(f: Field<'_>, kind: &str, warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    f.only_keys(&["apiVersion", "kind", "metadata", "spec", "status"])?;
    match kind {
        "GlobalNetworkPolicy" => parse_policy(f, PolicyKind::GlobalNetworkPolicy, Dialect::V3),
        "NetworkPolicy" => parse_policy(f, PolicyKind::NetworkPolicy, Dialect::V3),
        "StagedGlobalNetworkPolicy" => parse_policy(f, PolicyKind::StagedGlobalNetworkPolicy, Dialect::V3),
        "StagedNetworkPolicy" => parse_policy(f, PolicyKind::StagedNetworkPolicy, Dialect::V3),
        "StagedKubernetesNetworkPolicy" => k8s::parse_staged(f, warnings),
        "HostEndpoint" => parse_host_endpoint(f, Dialect::V3),
        "Profile" => parse_profile(f, Dialect::V3),
        "Tier" => parse_tier(f),
        "GlobalNetworkSet" => parse_network_set(f, false),
        "NetworkSet" => parse_network_set(f, true),
        "FelixConfiguration" => parse_felix_configuration(f),
        other => Err(f.with("kind", |k| {
            Ok(k.map(|k| {
                k.error(format!(
                    "unsupported kind '{other}' (expected GlobalNetworkPolicy, NetworkPolicy, StagedGlobalNetworkPolicy, StagedNetworkPolicy, StagedKubernetesNetworkPolicy, HostEndpoint, Profile, Tier, GlobalNetworkSet, NetworkSet or FelixConfiguration)"
                ))
            }))
        })?
        .unwrap_or_else(|| f.error("missing kind"))),
    }
}

/// A GlobalNetworkPolicy or NetworkPolicy (staged or not), in v3 or calicoctl v1 form.
pub(super) fn parse_policy(f: Field<'_>, kind: PolicyKind, dialect: Dialect) -> Result<Resource, LoadError> {
    let meta = metadata(f, &[])?;
    let namespaced = matches!(kind, PolicyKind::NetworkPolicy | PolicyKind::StagedNetworkPolicy);
    // kubectl and calicoctl put a namespaced resource without a namespace in `default`.
    let namespace = if namespaced { Some(meta.namespace.clone().unwrap_or_else(|| "default".into())) } else { None };
    let global = !namespaced;
    f.with("spec", |spec| {
        let spec = match spec {
            Some(s) => s,
            None => return Err(f.error("missing spec")),
        };
        let mut keys = vec![
            "tier",
            "order",
            "selector",
            "serviceAccountSelector",
            "types",
            "ingress",
            "egress",
            "performanceHints",
        ];
        if global {
            keys.extend_from_slice(&["namespaceSelector", "doNotTrack", "preDNAT", "applyOnForward"]);
        }
        if kind.is_staged() {
            keys.push("stagedAction");
        }
        spec.only_keys(&keys)?;

        let tier = spec.with("tier", |t| t.map(|t| t.string()).transpose())?.filter(|t| !t.is_empty());
        let tier = tier.unwrap_or_else(|| DEFAULT_TIER.to_string());
        let order = spec.with("order", |o| o.map(|o| o.f64()).transpose())?;
        // Blank text is no selector: Felix has no `all()` to rewrite in it (`target_selector`).
        let selector = spec.with("selector", |s| match s {
            Some(s) if !s.str()?.trim().is_empty() => parse_selector(s, false).map(Some),
            _ => Ok(None),
        })?;
        let ns_selector = if global {
            spec.with("namespaceSelector", |s| s.map(|s| parse_selector(s, false)).transpose())?
        } else {
            None
        };
        let sa_selector = spec.with("serviceAccountSelector", |s| s.map(|s| parse_selector(s, false)).transpose())?;
        let flag = |key: &str| spec.with(key, |b| b.map(|b| b.bool()).transpose()).map(|v| v.unwrap_or(false));
        let do_not_track = global && flag("doNotTrack")?;
        let pre_dnat = global && flag("preDNAT")?;
        let mut apply_on_forward = global && flag("applyOnForward")?;
        if dialect == Dialect::V1 && (do_not_track || pre_dnat) {
            // calicoctl v1 had no such requirement; the v1→v3 migration sets applyOnForward for these.
            apply_on_forward = true;
        }

        let scope = RuleScope { namespace: namespace.as_deref(), dialect };
        let ingress = spec.with("ingress", |r| parse_rules(r, scope))?;
        let egress = spec.with("egress", |r| parse_rules(r, scope))?;
        let explicit_types = spec.with("types", |t| t.map(|t| t.each(|ty| parse_type(ty, dialect))).transpose())?;
        let (applies_ingress, applies_egress) = match explicit_types {
            Some(types) if !types.is_empty() => {
                (types.contains(&Direction::Ingress), types.contains(&Direction::Egress))
            }
            // semantics §1.2 `types`: defaulted from which rule lists are present.
            _ => default_types(!ingress.is_empty(), !egress.is_empty(), pre_dnat),
        };

        if do_not_track && pre_dnat {
            return Err(spec.error("a policy cannot be both doNotTrack and preDNAT"));
        }
        if (do_not_track || pre_dnat) && !apply_on_forward {
            return Err(spec.error("doNotTrack and preDNAT policies need applyOnForward: true"));
        }
        if pre_dnat && (applies_egress || !egress.is_empty()) {
            return Err(spec.error("a preDNAT policy can only have ingress rules and the Ingress type"));
        }

        let target = target_selector(selector, namespace.as_deref(), ns_selector, sa_selector);
        Ok(Resource::Policy(std::sync::Arc::new(Policy {
            id: PolicyId { kind, namespace, name: meta.name.clone() },
            tier,
            order,
            selector: target,
            applies_ingress,
            applies_egress,
            ingress,
            egress,
            do_not_track,
            pre_dnat,
            apply_on_forward,
        })))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

fn parse_type(f: Field<'_>, dialect: Dialect) -> Result<Direction, LoadError> {
    let text = f.str()?;
    let norm = if dialect == Dialect::V1 { text.to_ascii_lowercase() } else { text.to_string() };
    match norm.as_str() {
        "Ingress" | "ingress" => Ok(Direction::Ingress),
        "Egress" | "egress" => Ok(Direction::Egress),
        _ => Err(f.error(format!("unknown policy type '{text}' (expected Ingress or Egress)"))),
    }
}

/// semantics §1.2 `types`: no egress rules ⇒ Ingress; egress rules only ⇒ Egress; both ⇒ both.
pub(super) fn default_types(has_ingress: bool, has_egress: bool, pre_dnat: bool) -> (bool, bool) {
    if pre_dnat {
        return (true, false);
    }
    match (has_ingress, has_egress) {
        (_, false) => (true, false),
        (false, true) => (false, true),
        (true, true) => (true, true),
    }
}

pub(super) fn parse_host_endpoint(f: Field<'_>, dialect: Dialect) -> Result<Resource, LoadError> {
    let extra: &[&str] = if dialect == Dialect::V1 { &["node"] } else { &[] };
    let meta = metadata(f, extra)?;
    let v1_node = if dialect == Dialect::V1 {
        f.require("metadata", |m| m.with("node", |n| n.map(|n| n.string()).transpose()))?
    } else {
        None
    };
    f.with("spec", |spec| {
        let spec = spec.ok_or_else(|| f.error("missing spec"))?;
        spec.only_keys(&["node", "interfaceName", "expectedIPs", "profiles", "ports"])?;
        let node = match spec.with("node", |n| n.map(|n| n.string()).transpose())?.or(v1_node) {
            Some(n) => n,
            None => return Err(spec.error("a HostEndpoint needs spec.node (metadata.node in calicoctl v1)")),
        };
        let interface_name =
            spec.with("interfaceName", |i| i.map(|i| i.string()).transpose())?.filter(|s| !s.is_empty());
        let expected_ips = spec
            .with("expectedIPs", |e| {
                e.map(|e| {
                    e.each(|ip| {
                        let text = ip.str()?;
                        text.parse().map_err(|_| ip.error(format!("'{text}' is not an IP address")))
                    })
                })
                .transpose()
            })?
            .unwrap_or_default();
        if interface_name.is_none() && expected_ips.is_empty() {
            return Err(spec.error("a HostEndpoint needs interfaceName or expectedIPs"));
        }
        let profiles = spec.with("profiles", |p| p.map(|p| p.strings()).transpose())?.unwrap_or_default();
        let ports = spec.with("ports", |p| p.map(|p| p.each(parse_named_port)).transpose())?.unwrap_or_default();
        Ok(Resource::HostEndpoint(HostEndpoint {
            name: meta.name.clone(),
            node,
            interface_name,
            expected_ips,
            labels: meta.labels.clone(),
            profiles,
            ports,
        }))
    })
}

/// `{name, protocol, port}` as HostEndpoint and workload ports declare them.
pub fn parse_named_port(f: Field<'_>) -> Result<NamedPort, LoadError> {
    f.only_keys(&["name", "protocol", "port"])?;
    let name = f.require("name", |n| n.string())?;
    let protocol = f.with("protocol", |p| {
        p.map(|p| {
            let text = p.str()?;
            Protocol::parse(text)
                .filter(|pr| pr.has_ports())
                .ok_or_else(|| p.error(format!("a named port's protocol must be TCP, UDP or SCTP, found '{text}'")))
        })
        .transpose()
    })?;
    let port = f.require("port", |p| p.uint(65535).map(|v| v as u16))?;
    Ok(NamedPort { name, protocol: protocol.unwrap_or(Protocol::TCP), port })
}

pub(super) fn parse_profile(f: Field<'_>, dialect: Dialect) -> Result<Resource, LoadError> {
    let extra: &[&str] = if dialect == Dialect::V1 { &["tags"] } else { &[] };
    let meta = metadata(f, extra)?;
    let scope = RuleScope { namespace: None, dialect };
    f.with("spec", |spec| {
        let (ingress, egress, mut labels_to_apply) = match spec {
            None => (Vec::new(), Vec::new(), Labels::new()),
            Some(spec) => {
                spec.only_keys(&["ingress", "egress", "labelsToApply"])?;
                (
                    spec.with("ingress", |r| parse_rules(r, scope))?,
                    spec.with("egress", |r| parse_rules(r, scope))?,
                    spec.with("labelsToApply", |l| l.map(|l| l.string_map()).transpose())?.unwrap_or_default(),
                )
            }
        };
        if dialect == Dialect::V1 {
            // calicoctl v1 profiles carried their labels-to-apply in metadata.labels.
            for (k, v) in &meta.labels {
                labels_to_apply.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(Resource::Profile(Profile { name: meta.name.clone(), ingress, egress, labels_to_apply }))
    })
}

fn parse_tier(f: Field<'_>) -> Result<Resource, LoadError> {
    let meta = metadata(f, &[])?;
    f.with("spec", |spec| {
        let (order, default_action) = match spec {
            None => (None, TierDefault::Deny),
            Some(spec) => {
                spec.only_keys(&["order", "defaultAction"])?;
                let order = spec.with("order", |o| o.map(|o| o.f64()).transpose())?;
                let default_action = spec.with("defaultAction", |d| {
                    d.map(|d| match d.str()? {
                        "Deny" => Ok(TierDefault::Deny),
                        "Pass" => Ok(TierDefault::Pass),
                        other => Err(d.error(format!("unknown defaultAction '{other}' (expected Deny or Pass)"))),
                    })
                    .transpose()
                })?;
                (order, default_action.unwrap_or(TierDefault::Deny))
            }
        };
        Ok(Resource::Tier(Tier { name: meta.name.clone(), order, default_action }))
    })
}

fn parse_network_set(f: Field<'_>, namespaced: bool) -> Result<Resource, LoadError> {
    let meta = metadata(f, &[])?;
    let namespace = if namespaced { Some(meta.namespace.clone().unwrap_or_else(|| "default".into())) } else { None };
    let nets = f.with("spec", |spec| match spec {
        None => Ok(Vec::new()),
        Some(spec) => {
            spec.only_keys(&["nets", "allowedEgressDomains"])?;
            spec.with("allowedEgressDomains", |d| match d {
                Some(d) if !d.each(|x| x.string())?.is_empty() => Err(d.error(
                    "allowedEgressDomains is a Calico Enterprise field (DNS policy) that calxdp does not enforce: a rule \
                     selecting this set would match only its nets, not the domains' addresses; list the addresses in \
                     nets instead",
                )),
                _ => Ok(()),
            })?;
            Ok(spec.with("nets", |n| n.map(super::rule::parse_nets).transpose())?.unwrap_or_default())
        }
    })?;
    let mut labels = meta.labels;
    if let Some(ns) = &namespace {
        // semantics §1.1: a namespaced NetworkSet carries its namespace label.
        labels.insert(NAMESPACE_LABEL.into(), ns.clone());
    }
    Ok(Resource::NetworkSet(NetworkSet { namespace, name: meta.name, labels, nets }))
}

/// `FelixConfiguration`: the Felix settings its spec sets (`crate::felix`). Raw settings in
/// `config.projectcalico.org/<Param>` annotations are refused: calxdp reads the spec only.
fn parse_felix_configuration(f: Field<'_>) -> Result<Resource, LoadError> {
    let meta = metadata(f, &[])?;
    f.require("metadata", |m| {
        m.with("annotations", |a| {
            let Some(a) = a else { return Ok(()) };
            match a.string_map()?.keys().find(|k| k.starts_with("config.projectcalico.org/")) {
                Some(k) => Err(a.error(format!(
                    "annotation {k}: calxdp does not read Felix settings from annotations; set the field in spec"
                ))),
                None => Ok(()),
            }
        })
    })?;
    let settings = f.with("spec", |s| s.map(crate::felix::parse_settings).transpose())?.unwrap_or_default();
    Ok(Resource::FelixConfiguration(Box::new(super::FelixConfiguration { name: meta.name, settings })))
}

#[cfg(test)]
mod tests {
    use crate::resource::{load_text, Labels, Policy, Resource, ResourceSet};
    use crate::yaml::Origin;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(yaml: &str) -> Vec<Resource> {
        load_text(yaml, &Origin::file("p.yaml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|d| d.resource)
            .collect()
    }

    fn policy(spec: &str, namespaced: bool) -> Policy {
        let (kind, ns) = if namespaced { ("NetworkPolicy", ", namespace: app") } else { ("GlobalNetworkPolicy", "") };
        let yaml = format!("apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: p{ns}}}\nspec:\n{spec}");
        match load(&yaml).remove(0) {
            Resource::Policy(p) => (*p).clone(),
            other => panic!("{other:?}"),
        }
    }

    const HEP: &[(&str, &str)] = &[("role", "node")];
    const POD: &[(&str, &str)] = &[
        ("projectcalico.org/namespace", "app"),
        ("projectcalico.org/orchestrator", "k8s"),
        ("projectcalico.org/serviceaccount", "web"),
        ("pcns.name", "app"),
        ("pcsa.projectcalico.org/name", "web"),
    ];
    /// A pod whose service account's name is too long for a label value: no serviceaccount label.
    const LONG_SA_POD: &[(&str, &str)] =
        &[("projectcalico.org/namespace", "app"), ("projectcalico.org/orchestrator", "k8s"), ("pcns.name", "app")];

    #[test]
    fn global_all_is_rewritten_across_the_combined_selector() {
        let p = policy("  selector: all()\n  serviceAccountSelector: '!has(restricted)'\n", false);
        assert!(
            !p.selector.matches(&labels(HEP)),
            "Felix: (has(projectcalico.org/serviceaccount)) && !has(pcsa.restricted)"
        );
        assert!(p.selector.matches(&labels(POD)));
        assert!(!p.selector.matches(&labels(LONG_SA_POD)));
        let p = policy("  selector: all()\n  namespaceSelector: name == 'app'\n", false);
        assert!(p.selector.matches(&labels(POD)));
        assert!(!p.selector.matches(&labels(&[("pcns.name", "app")])), "all() became has(projectcalico.org/namespace)");
        // No selector at all: nothing to rewrite, the service-account part alone.
        let p = policy("  serviceAccountSelector: '!has(restricted)'\n", false);
        assert!(p.selector.matches(&labels(HEP)));
        let p = policy("  selector: all()\n", false);
        assert!(p.selector.matches(&labels(HEP)), "without the other selectors all() stays all()");
    }

    #[test]
    fn namespaced_service_account_all_is_not_rewritten() {
        let p = policy("  serviceAccountSelector: all()\n", true);
        assert!(p.selector.matches(&labels(LONG_SA_POD)));
        assert!(!p.selector.matches(&labels(&[("projectcalico.org/namespace", "other")])));
        let p = policy("  serviceAccountSelector: has(projectcalico.org/name)\n", true);
        assert!(p.selector.matches(&labels(POD)) && !p.selector.matches(&labels(LONG_SA_POD)));
    }

    #[test]
    fn empty_service_accounts_add_no_selector() {
        let p = policy("  ingress:\n    - action: Allow\n      source: {serviceAccounts: {}}\n", true);
        assert_eq!(p.ingress[0].source.selector, None, "any address, not only the namespace's endpoints");
        let p = policy("  ingress:\n    - action: Allow\n      source: {serviceAccounts: {names: [web]}}\n", true);
        let s = p.ingress[0].source.selector.as_ref().expect("names select");
        assert!(s.matches(&labels(POD)) && !s.matches(&labels(LONG_SA_POD)));
    }

    #[test]
    fn allowed_egress_domains_are_refused_with_the_reason() {
        let e = load_text(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: s}\nspec:\n  nets: [10.0.0.0/8]\n  allowedEgressDomains: [example.com]\n",
            &Origin::file("s.yaml"),
        )
        .expect_err("refused")
        .to_string();
        assert!(
            e.contains("s.yaml:6:25: spec.allowedEgressDomains: allowedEgressDomains is a Calico Enterprise field"),
            "{e}"
        );
        assert_eq!(load("apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: s}\nspec: {allowedEgressDomains: []}\n").len(), 1);
    }

    #[test]
    fn felix_configurations_apply_by_name_over_the_node_file() {
        let node_yaml = "name: node1\nconfig: {defaultEndpointToHostAction: Accept, vxlanPort: 4790}\n";
        let origin = Origin::file("n.yaml");
        let docs = crate::yaml::parse_documents(node_yaml, &origin).unwrap();
        let node = crate::node::NodeConfig::parse(crate::yaml::Field::root(&docs[0], &origin)).unwrap();
        let mut rs = ResourceSet::new();
        rs.apply_all(load(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {vxlanPort: 4791, logPrefix: 'x %n'}\n---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.node1}\nspec: {logPrefix: node}\n---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.node2}\nspec: {defaultEndpointToHostAction: Drop}\n",
        ));
        let felix = crate::resolve::felix_config(&node, &rs);
        assert_eq!(felix.default_endpoint_to_host_action, crate::felix::EndpointToHostAction::Accept);
        assert_eq!((felix.vxlan_port, felix.log_prefix.as_str()), (4791, "node"));
        let e = load_text(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\n  annotations: {config.projectcalico.org/LogPrefix: x}\n",
            &Origin::file("f.yaml"),
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("metadata.annotations: annotation config.projectcalico.org/LogPrefix"), "{e}");
    }
}
