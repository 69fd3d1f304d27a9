//! kube-proxy's iptables mode for the node's services (notes/felix-iptables.md §13, §15.2; the ~v1.29–1.31
//! proxier): ClusterIP and NodePort DNAT through `KUBE-SVC-`/`KUBE-SEP-` chains, `externalTrafficPolicy:
//! Cluster` masquerading of NodePort traffic, the hairpin masquerade, `KUBE-FORWARD` and kubelet's
//! `KUBE-FIREWALL`. No cluster CIDR is known to the node model, so there is no local-traffic detector and
//! hence no ClusterIP masquerade rule (kube-proxy's behaviour without `--cluster-cidr`).

use std::net::IpAddr;

use calxdp_policy::net::IpFamily;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::Protocol;

use super::hash::{kube_endpoint_hash, kube_port_hash};
use super::Table;

/// kube-proxy's masquerade mark (bit 14), written as it writes it.
const MASQ: &str = "0x004000";

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::UDP => "udp",
        Protocol::SCTP => "sctp",
        _ => "tcp",
    }
}

/// A comment as kube-proxy writes it: quoted only when it has a space.
fn comment(c: &str) -> String {
    if c.contains(' ') {
        format!("-m comment --comment \"{c}\"")
    } else {
        format!("-m comment --comment {c}")
    }
}

fn host(ip: IpAddr) -> String {
    ip.to_string()
}

fn endpoint_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Adds kube-proxy's rules for `family` to the nat and filter tables.
pub fn add(world: &ResolvedNode, family: IpFamily, tables: &mut [Table]) {
    let mut nat_chains: Vec<String> = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut nat = vec![
        format!("-A PREROUTING {} -j KUBE-SERVICES", comment("kubernetes service portals")),
        format!("-A OUTPUT {} -j KUBE-SERVICES", comment("kubernetes service portals")),
        format!("-A POSTROUTING {} -j KUBE-POSTROUTING", comment("kubernetes postrouting rules")),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ}/{MASQ} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ}"),
        format!(
            "-A KUBE-POSTROUTING {} -j MASQUERADE --random-fully",
            comment("kubernetes service traffic requiring SNAT")
        ),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ}"),
    ];
    let filter_chains: Vec<String> = [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lb = comment("kubernetes load balancer firewall");
    let mut filter = vec![
        format!("-A INPUT -m conntrack --ctstate NEW {lb} -j KUBE-PROXY-FIREWALL"),
        format!("-A INPUT {} -j KUBE-NODEPORTS", comment("kubernetes health check service ports")),
        format!(
            "-A INPUT -m conntrack --ctstate NEW {} -j KUBE-EXTERNAL-SERVICES",
            comment("kubernetes externally-visible service portals")
        ),
        "-A INPUT -j KUBE-FIREWALL".to_string(),
        format!("-A FORWARD -m conntrack --ctstate NEW {lb} -j KUBE-PROXY-FIREWALL"),
        format!("-A FORWARD {} -j KUBE-FORWARD", comment("kubernetes forwarding rules")),
        format!("-A FORWARD -m conntrack --ctstate NEW {} -j KUBE-SERVICES", comment("kubernetes service portals")),
        format!(
            "-A FORWARD -m conntrack --ctstate NEW {} -j KUBE-EXTERNAL-SERVICES",
            comment("kubernetes externally-visible service portals")
        ),
        format!("-A OUTPUT -m conntrack --ctstate NEW {lb} -j KUBE-PROXY-FIREWALL"),
        format!("-A OUTPUT -m conntrack --ctstate NEW {} -j KUBE-SERVICES", comment("kubernetes service portals")),
        "-A OUTPUT -j KUBE-FIREWALL".to_string(),
    ];
    if family == IpFamily::V4 {
        filter.push(format!(
            "-A KUBE-FIREWALL -d 127.0.0.0/8 ! -s 127.0.0.0/8 {} -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
            comment("block incoming localnet connections")
        ));
    }
    filter.push("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".to_string());
    filter.push(format!(
        "-A KUBE-FORWARD {} -m mark --mark {MASQ}/{MASQ} -j ACCEPT",
        comment("kubernetes forwarding rules")
    ));
    filter.push(format!(
        "-A KUBE-FORWARD {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        comment("kubernetes forwarding conntrack rule")
    ));

    let mut svc_rules = Vec::new();
    let mut nodeport_rules = Vec::new();
    for s in &world.node.services {
        let in_family = |ip: &IpAddr| IpFamily::of(*ip) == family;
        let cluster_ip = s.cluster_ip.filter(in_family);
        let backends: Vec<_> = s.backends.iter().filter(|b| in_family(&b.ip())).collect();
        // A single-stack service of the other family has nothing here; a headless one has no ClusterIP.
        if cluster_ip.is_none() && !(s.node_port.is_some() && (!backends.is_empty() || s.cluster_ip.is_none())) {
            continue;
        }
        let name = format!("{}/{}", s.namespace, s.name);
        let p = proto(s.protocol);
        let h = kube_port_hash(&name, p);
        let (svc, ext) = (format!("KUBE-SVC-{h}"), format!("KUBE-EXT-{h}"));
        if backends.is_empty() {
            let why = comment(&format!("{name} has no endpoints"));
            if let Some(ip) = cluster_ip {
                filter.push(format!(
                    "-A KUBE-SERVICES {why} -m {p} -p {p} -d {} --dport {} -j REJECT",
                    host(ip),
                    s.port
                ));
            }
            if let Some(np) = s.node_port {
                filter.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES {why} -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {np} -j REJECT"
                ));
            }
            continue;
        }
        nat_chains.push(svc.clone());
        if let Some(ip) = cluster_ip {
            svc_rules.push(format!(
                "-A KUBE-SERVICES {} -m {p} -p {p} -d {} --dport {} -j {svc}",
                comment(&format!("{name} cluster IP")),
                host(ip),
                s.port
            ));
        }
        if let Some(np) = s.node_port {
            nat_chains.push(ext.clone());
            nodeport_rules.push(format!("-A KUBE-NODEPORTS {} -m {p} -p {p} --dport {np} -j {ext}", comment(&name)));
            nat.push(format!(
                "-A {ext} {} -j KUBE-MARK-MASQ",
                comment(&format!("masquerade traffic for {name} external destinations"))
            ));
            nat.push(format!("-A {ext} -j {svc}"));
        }
        let n = backends.len();
        for (i, b) in backends.iter().enumerate() {
            let ep = endpoint_text(b.ip(), b.port());
            let sep = format!("KUBE-SEP-{}", kube_endpoint_hash(&name, p, &ep));
            nat_chains.push(sep.clone());
            let c = comment(&format!("{name} -> {ep}"));
            if i + 1 < n {
                nat.push(format!(
                    "-A {svc} {c} -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                ));
            } else {
                nat.push(format!("-A {svc} {c} -j {sep}"));
            }
            nat.push(format!("-A {sep} {} -s {} -j KUBE-MARK-MASQ", comment(&name), host(b.ip())));
            nat.push(format!("-A {sep} {} -m {p} -p {p} -j DNAT --to-destination {ep}", comment(&name)));
        }
    }
    nat.extend(svc_rules);
    nat.extend(nodeport_rules);
    let local = match family {
        IpFamily::V4 => "-m addrtype --dst-type LOCAL".to_string(),
        IpFamily::V6 => "-m addrtype --dst-type LOCAL ! -d ::1/128".to_string(),
    };
    nat.push(format!(
        "-A KUBE-SERVICES {} {local} -j KUBE-NODEPORTS",
        comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    ));
    for t in tables.iter_mut() {
        match t.name {
            "nat" => {
                t.kube_chains = nat_chains.clone();
                t.kube_rules = nat.clone();
            }
            "filter" => {
                t.kube_chains = filter_chains.clone();
                t.kube_rules = filter.clone();
            }
            _ => {}
        }
    }
}
