//! Random but valid nodes, resource sets and packets for the differential tests: tiers, orders, every
//! action, selectors, nets, ports, named ports, profiles, host endpoints (named and `*`), network sets.

use std::net::IpAddr;

use proptest::prelude::*;

use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::{load_text, Protocol, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, LoadError, Origin};

const SELECTORS: &[&str] = &[
    "all()",
    "app == 'a'",
    "app == 'b'",
    "has(env)",
    "!has(env)",
    "app in {'a', 'c'}",
    "env != 'prod'",
    "tier == 'web' || app == 'c'",
    "host-endpoint == 'true'",
    "projectcalico.org/namespace == 'ns1'",
    "pcns.team == 'x'",
    "kind == 'set'",
];
const NETS: &[&str] =
    &["10.1.0.0/24", "10.1.0.0/30", "10.0.0.0/8", "192.168.0.0/16", "10.1.0.7", "0.0.0.0/0", "fd00::/8", "::/0"];
const PORTS: &[&str] = &["80", "\"1000:2000\"", "53", "http", "dns", "\"20:30\""];
const LABEL_VALUES: &[&str] = &["a", "b", "c"];

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
    proptest::sample::select(pool.to_vec())
}

/// One side of a rule as YAML flow mapping content.
fn entity(ports_ok: bool, namespaced: bool, v6: bool) -> impl Strategy<Value = String> {
    (
        proptest::option::weighted(0.35, proptest::collection::vec(pick(NETS), 1..3)),
        proptest::option::weighted(0.2, proptest::collection::vec(pick(NETS), 1..2)),
        proptest::option::weighted(0.35, pick(SELECTORS)),
        proptest::option::weighted(0.15, pick(SELECTORS)),
        proptest::option::weighted(if namespaced { 0.2 } else { 0.1 }, pick(&["all()", "team == 'x'", "global()"])),
        proptest::option::weighted(if ports_ok { 0.4 } else { 0.05 }, proptest::collection::vec(pick(PORTS), 1..3)),
        proptest::option::weighted(if ports_ok { 0.15 } else { 0.01 }, proptest::collection::vec(pick(PORTS), 1..2)),
    )
        .prop_map(move |(nets, not_nets, sel, not_sel, ns_sel, ports, not_ports)| {
            let mut parts = Vec::new();
            // One family per rule (validation forbids mixing): keep the nets of the rule's family.
            let keep = |n: &&&str| n.contains(':') == v6;
            if let Some(n) = &nets {
                let n: Vec<&str> = n.iter().filter(keep).copied().collect();
                if !n.is_empty() {
                    parts.push(format!(
                        "nets: [{}]",
                        n.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if let Some(n) = &not_nets {
                let n: Vec<&str> = n.iter().filter(keep).copied().collect();
                if !n.is_empty() {
                    parts.push(format!(
                        "notNets: [{}]",
                        n.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if let Some(s) = sel {
                parts.push(format!("selector: \"{s}\""));
            }
            if let Some(s) = not_sel {
                parts.push(format!("notSelector: \"{s}\""));
            }
            if let Some(s) = ns_sel {
                parts.push(format!("namespaceSelector: \"{s}\""));
            }
            // Without a port protocol only named ports are valid.
            let filter_ports = |ps: &Vec<&str>| -> Vec<String> {
                ps.iter().filter(|p| ports_ok || matches!(**p, "http" | "dns")).map(|p| p.to_string()).collect()
            };
            if let Some(p) = &ports {
                let p = filter_ports(p);
                if !p.is_empty() {
                    parts.push(format!("ports: [{}]", p.join(", ")));
                }
            }
            if let Some(p) = &not_ports {
                let p = filter_ports(p);
                if !p.is_empty() {
                    parts.push(format!("notPorts: [{}]", p.join(", ")));
                }
            }
            parts.join(", ")
        })
}

fn rule(namespaced: bool) -> impl Strategy<Value = String> {
    (
        pick(&["Allow", "Deny", "Log", "Pass", "Allow", "Deny"]),
        pick(&["", "TCP", "UDP", "ICMP", "ICMPv6", "\"47\"", "TCP"]),
        proptest::option::weighted(0.1, pick(&["TCP", "UDP"])),
        proptest::option::weighted(0.2, (0u8..12, proptest::option::of(0u8..3))),
        proptest::option::weighted(0.1, (0u8..12, proptest::option::of(0u8..3))),
        proptest::option::weighted(0.1, pick(&["4", "6"])),
        proptest::bool::weighted(0.2),
    )
        .prop_flat_map(move |(action, proto, not_proto, icmp, not_icmp, ipv, v6)| {
            let ports_ok = matches!(proto, "TCP" | "UDP");
            let icmp_ok = matches!(proto, "ICMP" | "ICMPv6");
            (entity(ports_ok, namespaced, v6), entity(ports_ok, namespaced, v6)).prop_map(move |(src, dst)| {
                let mut parts = vec![format!("action: {action}")];
                if !proto.is_empty() {
                    parts.push(format!("protocol: {proto}"));
                }
                if let Some(np) = not_proto {
                    parts.push(format!("notProtocol: {np}"));
                }
                let icmp_text = |(t, c): (u8, Option<u8>)| match c {
                    Some(c) => format!("{{type: {t}, code: {c}}}"),
                    None => format!("{{type: {t}}}"),
                };
                if icmp_ok {
                    if let Some(i) = icmp {
                        parts.push(format!("icmp: {}", icmp_text(i)));
                    }
                    if let Some(i) = not_icmp {
                        parts.push(format!("notICMP: {}", icmp_text(i)));
                    }
                }
                // ipVersion must agree with the protocol and the nets; only add it where nothing else says.
                if let Some(v) = ipv {
                    if !icmp_ok && !src.contains("ets") && !dst.contains("ets") {
                        parts.push(format!("ipVersion: {v}"));
                    }
                }
                if !src.is_empty() {
                    parts.push(format!("source: {{{src}}}"));
                }
                if !dst.is_empty() {
                    parts.push(format!("destination: {{{dst}}}"));
                }
                format!("{{{}}}", parts.join(", "))
            })
        })
}

fn policy(index: usize) -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        pick(&["", "t1", "t2", "default"]),
        proptest::option::weighted(0.7, 1u8..4),
        pick(SELECTORS),
        pick(&["", "[Ingress]", "[Egress]", "[Ingress, Egress]"]),
        pick(&["normal", "normal", "aof", "prednat", "dnt"]),
    )
        .prop_flat_map(move |(namespaced, tier, order, sel, types, flavour)| {
            let namespaced = namespaced && flavour == "normal";
            (
                Just((namespaced, tier, order, sel, types, flavour)),
                proptest::collection::vec(rule(namespaced), 0..4),
                proptest::collection::vec(rule(namespaced), 0..4),
            )
        })
        .prop_map(move |((namespaced, tier, order, sel, types, flavour), ingress, egress)| {
            let (kind, ns) =
                if namespaced { ("NetworkPolicy", "\n  namespace: ns1") } else { ("GlobalNetworkPolicy", "") };
            let mut spec = vec![format!("selector: \"{sel}\"")];
            if !tier.is_empty() {
                spec.push(format!("tier: {tier}"));
            }
            if let Some(o) = order {
                spec.push(format!("order: {o}"));
            }
            let mut egress = egress;
            let mut types = types;
            match flavour {
                "aof" => spec.push("applyOnForward: true".into()),
                "prednat" => {
                    spec.push("applyOnForward: true".into());
                    spec.push("preDNAT: true".into());
                    egress.clear();
                    types = "[Ingress]";
                }
                "dnt" => {
                    spec.push("applyOnForward: true".into());
                    spec.push("doNotTrack: true".into());
                }
                _ => {}
            }
            if !types.is_empty() {
                spec.push(format!("types: {types}"));
            }
            spec.push(format!("ingress: [{}]", ingress.join(", ")));
            spec.push(format!("egress: [{}]", egress.join(", ")));
            format!(
                "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n  name: p{index}{ns}\nspec:\n  {}\n",
                spec.join("\n  ")
            )
        })
}

fn labels() -> impl Strategy<Value = String> {
    (
        proptest::option::of(pick(LABEL_VALUES)),
        proptest::option::weighted(0.3, pick(&["prod", "dev"])),
        proptest::option::weighted(0.3, pick(&["web", "db"])),
    )
        .prop_map(|(app, env, tier)| {
            let mut l = Vec::new();
            if let Some(a) = app {
                l.push(format!("app: {a}"));
            }
            if let Some(e) = env {
                l.push(format!("env: {e}"));
            }
            if let Some(t) = tier {
                l.push(format!("tier: {t}"));
            }
            format!("{{{}}}", l.join(", "))
        })
}

/// A generated node (YAML), its resources (YAML) and packets.
#[derive(Debug, Clone)]
pub struct Case {
    pub node: String,
    pub resources: String,
    pub packets: Vec<PacketHeader>,
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(labels(), 4),
        proptest::collection::vec(labels(), 2),
        labels(),
        any::<bool>(),
        proptest::collection::vec(any::<usize>(), 1..7).prop_flat_map(|v| {
            let n = v.len();
            (0..n).map(policy).collect::<Vec<_>>()
        }),
        pick(&["Deny", "Pass"]),
        proptest::collection::vec(packet(), 12),
    )
        .prop_map(|(wl, remote, hep_labels, star, policies, t1_default, packets)| {
            let mut node = String::from(
                "name: n1\ninterfaces:\n  - {name: eth0, ips: [10.0.0.1/24], gateway: 10.0.0.254}\nnamespaces:\n  - {name: ns1, labels: {team: x}}\n  - {name: ns2, labels: {}}\nworkloads:\n",
            );
            for (i, l) in wl.iter().enumerate() {
                let ns = if i % 2 == 0 { "ns1" } else { "ns2" };
                node.push_str(&format!(
                    "  - {{name: w{i}, namespace: {ns}, interface: cali{i}, ips: [10.1.0.{}, \"fd00::{}\"], labels: {l}, ports: [{{name: http, port: 80}}, {{name: dns, port: 53, protocol: UDP}}]}}\n",
                    i + 5,
                    i + 5
                ));
            }
            node.push_str("services:\n  - {name: s1, namespace: ns1, protocol: TCP, clusterIP: 10.96.0.10, port: 80, nodePort: 30080, backends: [\"10.1.0.5:8080\"]}\n  - {name: s2, namespace: ns2, protocol: UDP, clusterIP: 10.96.0.11, port: 53, backends: [\"10.2.0.1:53\"]}\n");
            node.push_str("remoteEndpoints:\n");
            for (i, l) in remote.iter().enumerate() {
                node.push_str(&format!("  - {{name: r{i}, namespace: ns2, ips: [10.2.0.{}], labels: {l}}}\n", i + 1));
            }
            let iface = if star { "\"*\"" } else { "eth0" };
            let mut res = format!(
                "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: hep1\n  labels: {}\nspec: {{node: n1, interfaceName: {iface}, expectedIPs: [10.0.0.1], ports: [{{name: http, port: 8080}}]}}\n",
                hep_labels.replace('}', ", host-endpoint: 'true'}").replace("{, ", "{")
            );
            res.push_str(&format!(
                "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: t1}}\nspec: {{order: 10, defaultAction: {t1_default}}}\n---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: t2}}\nspec: {{order: 20}}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {{name: set1, labels: {{kind: set}}}}\nspec: {{nets: [192.168.5.0/24, 8.8.8.8]}}\n"
            ));
            for p in policies {
                res.push_str("---\n");
                res.push_str(&p);
            }
            Case { node, resources: res, packets }
        })
}

const ADDRS: &[&str] =
    &["10.1.0.5", "10.1.0.6", "10.1.0.7", "10.1.0.8", "10.2.0.1", "10.0.0.1", "10.96.0.10", "8.8.8.8", "203.0.113.5"];
const ADDRS6: &[&str] = &["fd00::5", "fd00::6", "2001:db8::1"];

pub fn packet() -> impl Strategy<Value = PacketHeader> {
    (
        any::<bool>(),
        0usize..9,
        0usize..9,
        pick(&["6", "17", "1", "58", "47", "132"]),
        pick(&["80", "53", "1500", "30080", "22", "8080", "25"]),
        pick(&["80", "53", "1500", "40000"]),
        0u8..12,
        0u8..3,
        pick(&["2", "2", "18", "16", "17", "4"]),
    )
        .prop_map(|(v6, s, d, proto, dport, sport, t, c, flags)| {
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (ADDRS6[s % 3].parse().unwrap(), ADDRS6[d % 3].parse().unwrap())
            } else {
                (ADDRS[s].parse().unwrap(), ADDRS[d].parse().unwrap())
            };
            // ICMP is protocol 1 over IPv4 and 58 over IPv6; the other pairing is not ICMP on the wire.
            let protocol = match (v6, proto) {
                (true, "1") => Protocol::ICMPV6,
                (false, "58") => Protocol::ICMP,
                _ => Protocol(proto.parse().unwrap()),
            };
            let ports = matches!(protocol, Protocol::TCP | Protocol::UDP | Protocol::SCTP);
            let icmp = matches!(protocol, Protocol::ICMP | Protocol::ICMPV6);
            PacketHeader {
                src,
                dst,
                protocol,
                src_port: if ports { sport.parse().unwrap() } else { 0 },
                dst_port: if ports { dport.parse().unwrap() } else { 0 },
                tcp_flags: if protocol == Protocol::TCP { flags.parse().unwrap() } else { 0 },
                icmp_type: if icmp { t } else { 0 },
                icmp_code: if icmp { c } else { 0 },
                icmp_id: 0,
            }
        })
}

/// The node and resources of a case, loaded; an error for a combination validation rejects.
pub fn load(c: &Case) -> Result<(NodeConfig, ResourceSet), LoadError> {
    let origin = Origin::file("node");
    let docs = parse_documents(&c.node, &origin)?;
    let node = NodeConfig::parse(Field::root(&docs[0], &origin))?;
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(&c.resources, &Origin::file("resources"))?.into_iter().map(|d| d.resource));
    Ok((node, rs))
}

/// The resolved node of a case.
pub fn resolve(c: &Case) -> Result<ResolvedNode, LoadError> {
    let (node, rs) = load(c)?;
    Ok(ResolvedNode::new(&node, &rs))
}

/// Cases to run: `CALXDP_PROPTEST_CASES`, or `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("CALXDP_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
