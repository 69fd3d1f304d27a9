//! Generators of node configurations, policy sets and packets, deterministic for a seed.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resource::{load_text, Protocol, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, Origin};

/// A small deterministic generator (xorshift64*), so every run benchmarks the same sets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub const NAMESPACES: usize = 20;
pub const APPS: usize = 50;
/// Remote pods the selectors resolve to (the cluster beyond this node).
pub const REMOTE_PODS: usize = 2000;

pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8)
}

/// A node with `local` pods and a cluster of remote pods, labelled `app=app<N>`, `tier`, in namespaces.
pub fn node(local: usize) -> NodeConfig {
    let mut y = String::from(
        "name: bench-node\ninterfaces:\n  - {name: eth0, ips: [10.0.0.10/24], gateway: 10.0.0.1}\nnamespaces:\n",
    );
    for n in 0..NAMESPACES {
        let _ = writeln!(y, "  - {{name: ns{n}, labels: {{team: t{}}}}}", n % 5);
    }
    y.push_str("workloads:\n");
    for i in 0..local {
        let _ = writeln!(
            y,
            "  - {{name: pod{i}, namespace: ns{}, interface: cali{i}, ips: [{}], labels: {{app: app{}, tier: {}}}, ports: [{{name: http, port: 8080}}, {{name: metrics, port: 9090}}]}}",
            i % NAMESPACES,
            pod_ip(i),
            i % APPS,
            ["web", "api", "db"][i % 3]
        );
    }
    y.push_str("remoteEndpoints:\n");
    for i in local..local + REMOTE_PODS {
        let _ = writeln!(
            y,
            "  - {{name: pod{i}, namespace: ns{}, ips: [{}], labels: {{app: app{}, tier: {}}}}}",
            i % NAMESPACES,
            pod_ip(i),
            i % APPS,
            ["web", "api", "db"][i % 3]
        );
    }
    let origin = Origin::file("bench-node");
    let docs = parse_documents(&y, &origin).expect("bench node parses");
    NodeConfig::parse(Field::root(&docs[0], &origin)).expect("bench node is valid")
}

/// One rule of a realistic mix (YAML flow mapping).
fn rule(rng: &mut Rng) -> String {
    let action = match rng.below(10) {
        0..=5 => "Allow",
        6..=7 => "Deny",
        8 => "Pass",
        _ => "Log",
    };
    // Every rule names its peers, as real policies do: a packet matches deep in the list or not at all.
    let peer = match rng.below(5) {
        0 | 1 => format!("selector: \"app == 'app{}'\"", rng.below(APPS as u64)),
        2 => format!(
            "selector: \"tier == '{}'\", namespaceSelector: \"team == 't{}'\"",
            ["web", "api", "db"][rng.below(3) as usize],
            rng.below(5)
        ),
        3 => format!(
            "nets: [\"{}.{}.{}.0/{}\"]",
            10 + rng.below(200),
            rng.below(256),
            rng.below(256),
            [8, 16, 20, 24, 28][rng.below(5) as usize]
        ),
        _ => format!(
            "nets: [\"172.{}.0.0/16\"], notNets: [\"172.{}.{}.0/24\"]",
            16 + rng.below(16),
            16 + rng.below(16),
            rng.below(256)
        ),
    };
    let (proto, ports) = match rng.below(8) {
        0..=3 => {
            let p = match rng.below(6) {
                0 => format!("{}", [80, 443, 8080, 22, 3306, 5432, 6379][rng.below(7) as usize]),
                1 => {
                    let lo = 1000 + rng.below(20) * 1000;
                    format!("\"{}:{}\"", lo, lo + 999)
                }
                2 => "http".into(),
                3 => format!("{}, {}", 1024 + rng.below(60_000), 1024 + rng.below(60_000)),
                _ => format!("{}", 1 + rng.below(65_000)),
            };
            ("TCP", format!("ports: [{p}]"))
        }
        4 => ("UDP", format!("ports: [{}]", [53, 123, 4789, 8472][rng.below(4) as usize])),
        5 => ("ICMP", String::new()),
        _ => ("", String::new()),
    };
    let mut parts = vec![format!("action: {action}")];
    if !proto.is_empty() {
        parts.push(format!("protocol: {proto}"));
    }
    if !peer.is_empty() {
        parts.push(format!("source: {{{peer}}}"));
    }
    if !ports.is_empty() {
        parts.push(format!("destination: {{{ports}}}"));
    }
    format!("{{{}}}", parts.join(", "))
}

/// `policies` GlobalNetworkPolicies of `rules_each` ingress rules. `selector` picks their targets.
pub fn policies(seed: u64, policies: usize, rules_each: usize, selector: impl Fn(usize) -> String) -> String {
    let mut rng = Rng::new(seed);
    let mut y = String::with_capacity(policies * rules_each * 120);
    y.push_str("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: platform}\nspec: {order: 100, defaultAction: Pass}\n");
    for p in 0..policies {
        let tier = if p % 10 == 0 { "platform" } else { "default" };
        let rules: Vec<String> = (0..rules_each).map(|_| rule(&mut rng)).collect();
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: pol-{p:06}}}\nspec:\n  tier: {tier}\n  order: {}\n  selector: \"{}\"\n  types: [Ingress]\n  ingress: [{}]\n",
            p % 1000,
            selector(p),
            rules.join(", ")
        );
    }
    y
}

pub fn load(yaml: &str) -> ResourceSet {
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(yaml, &Origin::file("bench")).expect("bench policies load").into_iter().map(|d| d.resource));
    rs
}

/// New-flow packets towards local pod 0 from a mix of pod, external and host sources.
pub fn packets(seed: u64, n: usize, local: usize) -> Vec<PacketHeader> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let src = match rng.below(4) {
                0 | 1 => IpAddr::V4(pod_ip(rng.below((local + REMOTE_PODS) as u64) as usize)),
                2 => IpAddr::V4(Ipv4Addr::new(
                    10 + rng.below(200) as u8,
                    rng.below(256) as u8,
                    rng.below(256) as u8,
                    1 + rng.below(250) as u8,
                )),
                _ => IpAddr::V4(Ipv4Addr::new(172, 16 + rng.below(16) as u8, rng.below(256) as u8, 7)),
            };
            let (protocol, dport) = match rng.below(10) {
                0..=6 => (Protocol::TCP, [80u16, 443, 8080, 22, 5432, 9090, 30080][rng.below(7) as usize]),
                7 | 8 => (Protocol::UDP, [53u16, 123, 4789][rng.below(3) as usize]),
                _ => (Protocol::ICMP, 0),
            };
            PacketHeader {
                src,
                dst: IpAddr::V4(pod_ip(0)),
                protocol,
                src_port: if protocol == Protocol::ICMP { 0 } else { 32768 + rng.below(28000) as u16 },
                dst_port: dport,
                tcp_flags: 2,
                icmp_type: if protocol == Protocol::ICMP { 8 } else { 0 },
                icmp_code: 0,
                icmp_id: 0,
            }
        })
        .collect()
}

/// Tables for the pipeline benchmarks: 1k synthetic rules on every pod, behind the DNS allow every cluster
/// has (its own first tier), so the benchmark's flows are admitted after a real classification.
pub fn pipeline_tables() -> std::sync::Arc<calxdp_dataplane::tables::TableSlot> {
    use calxdp_dataplane::tables::{TableSet, TableSlot};
    use calxdp_policy::compile::ProgramCache;
    use calxdp_policy::resolve::ResolvedNode;
    use std::sync::Arc;
    let node = node(20);
    let mut yaml = policies(5, 100, 10, |_| "all()".into());
    yaml.push_str("---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: cluster-essentials}\nspec: {order: 1}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: allow-dns}\nspec: {tier: cluster-essentials, order: 0, selector: all(), ingress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]}\n");
    let resources = load(&yaml);
    let world = ResolvedNode::new(&node, &resources);
    let compiled = ProgramCache::new().compile(&world, 1);
    Arc::new(TableSlot::new(TableSet::new(1, Arc::new(world), Arc::new(compiled))))
}

/// The answer of pod 0 to flow `i`'s request.
pub fn dns_reply(i: usize) -> PacketHeader {
    let q = dns_flow(i);
    PacketHeader { src: q.dst, dst: q.src, src_port: q.dst_port, dst_port: q.src_port, ..q }
}

/// Flow `i` of the pipeline benchmarks: a client beyond the uplink asking pod 0 for DNS.
pub fn dns_flow(i: usize) -> PacketHeader {
    PacketHeader {
        src: IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250 % 8) as u8, (i % 250 + 2) as u8)),
        dst: IpAddr::V4(pod_ip(0)),
        protocol: Protocol::UDP,
        src_port: 1024 + (i / 2000) as u16,
        dst_port: 53,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
    }
}
