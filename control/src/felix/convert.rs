//! One of Felix's messages as calxdp's model: a rule, a workload endpoint, a host endpoint, and the labels
//! that stand for IP sets and tier lists (the scheme is in [`super::lower`]'s module comment). The stream's
//! state checks each message with these as it arrives; the lowering uses them to build the whole model.
//! Neither is needed here, so both can depend on this module.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use calxdp_policy::net::{IpFamily, IpNet};
use calxdp_policy::node::{parse_mac, Workload};
use calxdp_policy::resource::{Action, EntityRule, HostEndpoint, IcmpMatch, Port, Protocol, Rule};
use calxdp_policy::selector::{Expr, Selector};

use super::proto;

/// A message calxdp cannot express: the stream names it with the message and its sequence number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A prefix that does not parse, with the parser's reason.
    #[error("{0}")]
    Net(String),
    #[error("port range {first}:{last} is not within 0-65535")]
    PortRange { first: i32, last: i32 },
    #[error("protocol number {0} is not 1-255")]
    ProtocolNumber(i32),
    #[error("unknown protocol name '{0}'")]
    ProtocolName(String),
    /// "type" or "code", and the value.
    #[error("ICMP {what} {value} is not 0-255")]
    IcmpByte { what: &'static str, value: i32 },
    #[error("unknown action '{0}'")]
    Action(String),
    #[error("unknown ip_version {0}")]
    IpVersion(i32),
    #[error("service (IP, port) sets together with destination ports are not supported")]
    ServiceWithPorts,
    #[error("workload endpoint {0} has no interface name")]
    NoInterface(WorkloadKey),
    #[error("workload endpoint {0}: '{1}' is not a MAC address")]
    Mac(WorkloadKey, String),
    /// An address of the endpoint that does not parse, with the parser's reason.
    #[error("workload endpoint {0}: {1}")]
    Address(WorkloadKey, String),
    #[error("host endpoint {0}: '{1}' is not an address")]
    HostAddress(String, String),
}

/// The label an IP set's members carry.
pub fn set_label(id: &str) -> String {
    format!("felixset/{id}")
}

/// A converted rule and the IP sets it refers to.
#[derive(Debug)]
pub struct RuleSets {
    pub rule: Rule,
    pub sets: Vec<String>,
}

/// `has(l1) && has(l2) && …` (`all`) or `has(l1) || has(l2) || …` over `labels`; `None` for no labels.
pub(super) fn has_labels(labels: impl IntoIterator<Item = String>, all: bool) -> Option<Selector> {
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

fn nets(list: &[String]) -> Result<Vec<IpNet>, ConvertError> {
    list.iter().map(|n| n.parse::<IpNet>().map_err(|e| ConvertError::Net(e.0))).collect()
}

fn ports(ranges: &[proto::PortRange], named: &[String]) -> Result<Vec<Port>, ConvertError> {
    let mut out = Vec::new();
    for r in ranges {
        let ok = (0..=65535).contains(&r.first) && (0..=65535).contains(&r.last) && r.first <= r.last;
        if !ok {
            return Err(ConvertError::PortRange { first: r.first, last: r.last });
        }
        out.push(Port::Range(r.first as u16, r.last as u16));
    }
    out.extend(named.iter().map(|id| Port::Named(set_label(id))));
    Ok(out)
}

fn protocol(p: &Option<proto::Protocol>) -> Result<Option<Protocol>, ConvertError> {
    use proto::protocol::NumberOrName;
    match p.as_ref().and_then(|p| p.number_or_name.as_ref()) {
        None => Ok(None),
        Some(NumberOrName::Number(n)) => match u8::try_from(*n) {
            Ok(v) if v >= 1 => Ok(Some(Protocol(v))),
            _ => Err(ConvertError::ProtocolNumber(*n)),
        },
        Some(NumberOrName::Name(name)) => {
            Protocol::parse(name).map(Some).ok_or_else(|| ConvertError::ProtocolName(name.clone()))
        }
    }
}

fn icmp_match(t: Option<i32>, tc: Option<&proto::IcmpTypeAndCode>) -> Result<Option<IcmpMatch>, ConvertError> {
    let byte = |v: i32, what: &'static str| u8::try_from(v).map_err(|_| ConvertError::IcmpByte { what, value: v });
    Ok(match (t, tc) {
        (Some(t), _) => Some(IcmpMatch { icmp_type: byte(t, "type")?, code: None }),
        (None, Some(tc)) => Some(IcmpMatch { icmp_type: byte(tc.r#type, "type")?, code: Some(byte(tc.code, "code")?) }),
        (None, None) => None,
    })
}

/// One of Felix's rules as a calxdp rule (matching semantics: notes/felix-protocol.md §3.9).
pub fn rule_from_proto(r: &proto::Rule) -> Result<RuleSets, ConvertError> {
    use proto::rule::{Icmp, NotIcmp};
    let action = match r.action.as_str() {
        "" | "allow" => Action::Allow,
        "deny" => Action::Deny,
        "log" => Action::Log,
        "next-tier" | "pass" => Action::Pass,
        other => return Err(ConvertError::Action(other.to_string())),
    };
    let ip_version = match r.ip_version {
        0 => None,
        4 => Some(IpFamily::V4),
        6 => Some(IpFamily::V6),
        v => return Err(ConvertError::IpVersion(v)),
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
        _ => return Err(ConvertError::ServiceWithPorts),
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

/// `WorkloadEndpointID`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub orchestrator: String,
    pub workload: String,
    pub endpoint: String,
}

impl WorkloadKey {
    pub fn from_proto(id: &proto::WorkloadEndpointId) -> WorkloadKey {
        WorkloadKey {
            orchestrator: id.orchestrator_id.clone(),
            workload: id.workload_id.clone(),
            endpoint: id.endpoint_id.clone(),
        }
    }

    pub fn to_proto(&self) -> proto::WorkloadEndpointId {
        proto::WorkloadEndpointId {
            orchestrator_id: self.orchestrator.clone(),
            workload_id: self.workload.clone(),
            endpoint_id: self.endpoint.clone(),
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.orchestrator, self.workload, self.endpoint)
    }
}

/// The tier lists of a host endpoint, in the order Felix's renderer walks them.
pub fn hep_tier_lists(h: &proto::HostEndpoint) -> [&[proto::TierInfo]; 4] {
    [&h.untracked_tiers, &h.pre_dnat_tiers, &h.tiers, &h.forward_tiers]
}

/// Identifies an endpoint's tier lists by content: endpoints with equal lists carry the same label, and a
/// policy selects the endpoints whose lists name it (see the module comment).
pub(super) fn lists_label(lists: &[&[proto::TierInfo]]) -> String {
    hashed_lists_label(lists_hash(lists))
}

/// The label of tier lists whose [`lists_hash`] is `hash`.
pub(super) fn hashed_lists_label(hash: u64) -> String {
    format!("felixlists/{hash:016x}")
}

/// A hash of an endpoint's tier lists (tiers in order, their policies in order, default actions).
pub(super) fn lists_hash(lists: &[&[proto::TierInfo]]) -> u64 {
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
    h.finish()
}

/// The labels an endpoint carries: the one of its tier lists.
fn endpoint_labels(lists: &[&[proto::TierInfo]]) -> BTreeMap<String, String> {
    BTreeMap::from([(lists_label(lists), String::new())])
}

fn addrs(v4: &[String], v6: &[String], key: &WorkloadKey) -> Result<Vec<IpAddr>, ConvertError> {
    v4.iter()
        .chain(v6)
        .map(|t| t.parse::<IpNet>().map(|n| n.addr()).map_err(|e| ConvertError::Address(key.clone(), e.0)))
        .collect()
}

/// A workload endpoint as a local pod of the node.
/// `lists_hash` is the [`lists_hash`] of the endpoint's tier list (the state keeps it per endpoint: hashing
/// every endpoint's lists at every publication was a third of an endpoint change at 1000 endpoints).
pub fn workload(key: &WorkloadKey, ep: &proto::WorkloadEndpoint, lists_hash: u64) -> Result<Workload, ConvertError> {
    if ep.name.is_empty() {
        return Err(ConvertError::NoInterface(key.clone()));
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
        m => Some(parse_mac(m).ok_or_else(|| ConvertError::Mac(key.clone(), m.to_string()))?),
    };
    Ok(Workload {
        name,
        namespace,
        interface: Some(ep.name.clone()),
        ips: addrs(&ep.ipv4_nets, &ep.ipv6_nets, key)?,
        labels: BTreeMap::from([(hashed_lists_label(lists_hash), String::new())]),
        service_account,
        ports: Vec::new(),
        mac,
        profiles: Some(ep.profile_ids.clone()),
    })
}

/// A host endpoint of this node.
pub fn host_endpoint(node: &str, id: &str, ep: &proto::HostEndpoint) -> Result<HostEndpoint, ConvertError> {
    let expected_ips = ep
        .expected_ipv4_addrs
        .iter()
        .chain(&ep.expected_ipv6_addrs)
        .map(|a| a.parse::<IpAddr>().map_err(|_| ConvertError::HostAddress(id.to_string(), a.clone())))
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
