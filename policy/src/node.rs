//! The node calxdp runs on: its uplinks and addresses, its pods, the namespaces and services it knows, and
//! the Felix configuration that shapes verdicts. Read from the `node:` section of a parity scenario or from
//! a `--node` file; both use the same schema (shared/parity/FORMAT.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

pub use crate::felix::{
    parse_go_duration, AllowAction, DenyAction, EndpointToHostAction, Failsafe, FelixConfig, FelixSettings,
    InterfaceMatch, LogRate, NftablesMode, DEFAULT_CONNTRACK_CAPACITY,
};
use crate::net::IpNet;
use crate::resource::parse_named_port;
use crate::resource::{Labels, NamedPort, Protocol};
use crate::yaml::{parse_documents, Field, LoadError, Origin};

/// An uplink: one of the node's own interfaces, where host endpoints bind.
#[derive(Clone, Debug, PartialEq)]
pub struct Uplink {
    pub name: String,
    /// The host's addresses on this interface, with their subnets.
    pub ips: Vec<IpNet>,
    /// Host addresses exactly as configured (the prefix only says which subnet is on-link).
    pub addrs: Vec<IpAddr>,
    /// Next hops for destinations off the node's subnets: one per address family at most (`gateway:` is an
    /// address or a list of them).
    pub gateways: Vec<IpAddr>,
    /// The interface's MAC (the host tap carries it too).
    pub mac: Option<[u8; 6]>,
    /// The gateway's MAC, where ARP has not been done for it (offline replay, tests).
    pub gateway_mac: Option<[u8; 6]>,
}

impl Uplink {
    /// The gateway for a destination of `dst`'s address family.
    pub fn gateway(&self, dst: IpAddr) -> Option<IpAddr> {
        self.gateways.iter().copied().find(|g| g.is_ipv4() == dst.is_ipv4())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn mac_field(f: Field<'_>) -> Result<[u8; 6], LoadError> {
    let text = f.str()?;
    parse_mac(text).ok_or_else(|| f.error(format!("'{text}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A pod: on this node (`interface` set) or elsewhere in the cluster (a remote endpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// The host side of the pod's veth; `None` for a pod on another node.
    pub interface: Option<String>,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    pub service_account: String,
    pub ports: Vec<NamedPort>,
    /// The pod's own MAC, behind its veth.
    pub mac: Option<[u8; 6]>,
    /// The profiles the endpoint lists, when something other than Kubernetes' `kns.<namespace>`,
    /// `ksa.<namespace>.<serviceaccount>` pair says so (Felix's `WorkloadEndpoint.profile_ids`).
    pub profiles: Option<Vec<String>>,
}

/// A Kubernetes Service as kube-proxy programs it.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub protocol: Protocol,
    pub cluster_ip: Option<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub backends: Vec<SocketAddr>,
}

/// Everything calxdp knows about the node it runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub uplinks: Vec<Uplink>,
    pub namespaces: Vec<Namespace>,
    pub workloads: Vec<Workload>,
    pub remote_endpoints: Vec<Workload>,
    pub services: Vec<Service>,
    pub felix: FelixConfig,
}

/// Why a node is inconsistent ([`NodeConfig::check`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("interface name '{0}' is used twice")]
    InterfaceNameTwice(String),
    #[error("workload name '{0}' is already used by an interface, a workload or 'host'")]
    WorkloadNameUsed(String),
    #[error("workload interface '{0}' is used twice")]
    WorkloadInterfaceTwice(String),
}

impl NodeConfig {
    /// Reads a node file (the schema of a parity scenario's `node:` section). A file that cannot be read
    /// or holds no document is an error about the whole file, with no position.
    pub fn load(path: &std::path::Path) -> Result<NodeConfig, LoadError> {
        let file = path.display().to_string();
        let whole = |message: String| LoadError { file: file.clone(), line: 0, col: 0, field: String::new(), message };
        let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        let origin = Origin::file(file.clone());
        let docs = parse_documents(&text, &origin)?;
        let doc = docs.first().ok_or_else(|| whole("empty node file".into()))?;
        NodeConfig::parse(Field::root(doc, &origin))
    }

    /// Reads a node from its YAML mapping.
    pub fn parse(f: Field<'_>) -> Result<NodeConfig, LoadError> {
        f.only_keys(&["name", "interfaces", "namespaces", "workloads", "remoteEndpoints", "services", "config"])?;
        let name = f.require("name", |n| n.string())?;
        let uplinks = f.with("interfaces", |l| l.map(|l| l.each(parse_uplink)).transpose())?.unwrap_or_default();
        let namespaces = f.with("namespaces", |l| l.map(|l| l.each(parse_namespace)).transpose())?.unwrap_or_default();
        let workloads =
            f.with("workloads", |l| l.map(|l| l.each(|w| parse_workload(w, true))).transpose())?.unwrap_or_default();
        let remote_endpoints = f
            .with("remoteEndpoints", |l| l.map(|l| l.each(|w| parse_workload(w, false))).transpose())?
            .unwrap_or_default();
        let services = f.with("services", |l| l.map(|l| l.each(parse_service)).transpose())?.unwrap_or_default();
        // The node file's `config:` over Felix's defaults; FelixConfiguration resources go over it when the
        // node is resolved with its resources (`ResolvedNode::new`).
        let felix = f
            .with("config", |c| {
                c.map(|c| {
                    crate::felix::parse_settings(c).map(|s| {
                        let mut felix = FelixConfig::default();
                        felix.apply(&s);
                        felix
                    })
                })
                .transpose()
            })?
            .unwrap_or_default();
        let node = NodeConfig { name, uplinks, namespaces, workloads, remote_endpoints, services, felix };
        node.validate(f)?;
        Ok(node)
    }

    fn validate(&self, f: Field<'_>) -> Result<(), LoadError> {
        self.check().map_err(|e| f.error(e.to_string()))
    }

    /// The node's own consistency: names and interfaces used once.
    pub fn check(&self) -> Result<(), NodeError> {
        let mut names: BTreeMap<&str, &str> = BTreeMap::new();
        for u in &self.uplinks {
            if names.insert(&u.name, "interface").is_some() {
                return Err(NodeError::InterfaceNameTwice(u.name.clone()));
            }
        }
        let mut interfaces: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for w in &self.workloads {
            if names.insert(&w.name, "workload").is_some() || w.name == "host" {
                return Err(NodeError::WorkloadNameUsed(w.name.clone()));
            }
            if let Some(i) = &w.interface {
                if self.uplinks.iter().any(|u| &u.name == i) || !interfaces.insert(i) {
                    return Err(NodeError::WorkloadInterfaceTwice(i.clone()));
                }
            }
        }
        Ok(())
    }

    /// Adds a workload, or replaces the one with its namespace and name (local or remote, by whether it
    /// has an interface). A pod that moves between this node and another changes list.
    pub fn upsert_workload(&mut self, w: Workload) {
        let same = |o: &Workload| o.name == w.name && o.namespace == w.namespace;
        let local = w.interface.is_some();
        if local {
            self.remote_endpoints.retain(|o| !same(o));
            match self.workloads.iter_mut().find(|o| same(o)) {
                Some(slot) => *slot = w,
                None => self.workloads.push(w),
            }
        } else {
            self.workloads.retain(|o| !same(o));
            match self.remote_endpoints.iter_mut().find(|o| same(o)) {
                Some(slot) => *slot = w,
                None => self.remote_endpoints.push(w),
            }
        }
    }

    /// Removes the workload (local or remote) of that namespace and name; false if there is none.
    pub fn remove_workload(&mut self, namespace: &str, name: &str) -> bool {
        let before = self.workloads.len() + self.remote_endpoints.len();
        self.workloads.retain(|o| !(o.name == name && o.namespace == namespace));
        self.remote_endpoints.retain(|o| !(o.name == name && o.namespace == namespace));
        before != self.workloads.len() + self.remote_endpoints.len()
    }

    /// Adds a namespace or replaces its labels.
    pub fn upsert_namespace(&mut self, ns: Namespace) {
        match self.namespaces.iter_mut().find(|o| o.name == ns.name) {
            Some(slot) => *slot = ns,
            None => self.namespaces.push(ns),
        }
    }

    /// Removes a declared namespace (its pods stay; it keeps existing, unlabelled, while pods name it).
    pub fn remove_namespace(&mut self, name: &str) -> bool {
        let before = self.namespaces.len();
        self.namespaces.retain(|o| o.name != name);
        before != self.namespaces.len()
    }

    /// Whether `ip` is one of the host's own addresses.
    pub fn is_host_ip(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.uplinks.iter().any(|u| u.addrs.contains(&ip))
    }

    /// The local workload that owns `ip`.
    /// The source MASQUERADE gives a flow to `dst` leaving by uplink `via` (or by a pod's veth, `None`): the
    /// uplink's address of the family, else (a veth has no address) the host's first address of the family,
    /// as the kernel's source selection falls back to another interface's.
    pub fn masquerade_source(&self, via: Option<usize>, dst: IpAddr) -> Option<IpAddr> {
        let of_family = |addrs: &[IpAddr]| addrs.iter().copied().find(|a| a.is_ipv4() == dst.is_ipv4());
        via.and_then(|u| of_family(&self.uplinks[u].addrs))
            .or_else(|| self.uplinks.iter().find_map(|u| of_family(&u.addrs)))
    }

    pub fn local_workload_by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.workloads.iter().position(|w| w.ips.contains(&ip))
    }

    pub fn workload_by_name(&self, name: &str) -> Option<usize> {
        self.workloads.iter().position(|w| w.name == name)
    }

    pub fn uplink_by_name(&self, name: &str) -> Option<usize> {
        self.uplinks.iter().position(|u| u.name == name)
    }

    /// The uplink a packet to `dst` leaves by: the one whose subnet holds it, else the first with a gateway,
    /// else the first.
    pub fn uplink_for(&self, dst: IpAddr) -> Option<usize> {
        self.uplinks
            .iter()
            .position(|u| u.ips.iter().any(|n| n.contains(dst)))
            .or_else(|| self.uplinks.iter().position(|u| u.gateway(dst).is_some()))
            .or(if self.uplinks.is_empty() { None } else { Some(0) })
    }

    /// Every namespace the node knows: declared ones, then ones only named by pods.
    pub fn all_namespaces(&self) -> Vec<Namespace> {
        let mut out = self.namespaces.clone();
        for w in self.workloads.iter().chain(&self.remote_endpoints) {
            if !out.iter().any(|n| n.name == w.namespace) {
                out.push(Namespace { name: w.namespace.clone(), labels: Labels::new() });
            }
        }
        out
    }
}

/// The addresses a local workload of `old` had that no local workload of `new` has with the same identity
/// (namespace/name): those of deleted pods and the addresses a pod lost. Their flows are flushed (semantics
/// §8.2).
pub fn removed_workload_addresses(old: &NodeConfig, new: &NodeConfig) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for w in &old.workloads {
        let kept = new.workloads.iter().find(|n| n.name == w.name && n.namespace == w.namespace);
        for ip in &w.ips {
            if !kept.is_some_and(|n| n.ips.contains(ip)) && !out.contains(ip) {
                out.push(*ip);
            }
        }
    }
    out
}

fn parse_uplink(f: Field<'_>) -> Result<Uplink, LoadError> {
    f.only_keys(&["name", "ips", "gateway", "mac", "gatewayMac"])?;
    let name = f.require("name", |n| n.string())?;
    let mut ips = Vec::new();
    let mut addrs = Vec::new();
    f.with("ips", |l| {
        if let Some(l) = l {
            l.each(|ip| {
                let text = ip.str()?;
                let addr: IpAddr = text.split('/').next().unwrap_or("").parse().map_err(|_| {
                    ip.error(format!("'{text}' is not an address with an optional prefix (e.g. 10.0.0.10/24)"))
                })?;
                let net: IpNet = text.parse().map_err(|e: crate::net::BadNet| ip.error(e.to_string()))?;
                addrs.push(addr);
                ips.push(net);
                Ok(())
            })?;
        }
        Ok(())
    })?;
    let gateways = f
        .with("gateway", |g| {
            g.map(|g| match g.str() {
                Ok(_) => parse_ip(g).map(|ip| vec![ip]),
                Err(_) => g.each(parse_ip),
            })
            .transpose()
        })?
        .unwrap_or_default();
    if gateways.iter().filter(|g| g.is_ipv4()).count() > 1 || gateways.iter().filter(|g| g.is_ipv6()).count() > 1 {
        return Err(f.error("gateway: at most one address per IP family"));
    }
    let mac = f.with("mac", |m| m.map(mac_field).transpose())?;
    let gateway_mac = f.with("gatewayMac", |m| m.map(mac_field).transpose())?;
    Ok(Uplink { name, ips, addrs, gateways, mac, gateway_mac })
}

fn parse_ip(f: Field<'_>) -> Result<IpAddr, LoadError> {
    let text = f.str()?;
    let bare = text.strip_suffix("/32").or_else(|| text.strip_suffix("/128")).unwrap_or(text);
    bare.parse().map_err(|_| f.error(format!("'{text}' is not an IP address")))
}

/// A namespace as the node file (or a scenario's `namespace:` step) writes it.
pub fn parse_namespace(f: Field<'_>) -> Result<Namespace, LoadError> {
    f.only_keys(&["name", "labels"])?;
    let name = f.require("name", |n| n.string())?;
    let labels = f.with("labels", |l| l.map(|l| l.string_map()).transpose())?.unwrap_or_default();
    Ok(Namespace { name, labels })
}

/// A workload as a scenario's `workload:` step writes it: with `interface` a pod on this node, without one a
/// pod elsewhere in the cluster.
pub fn parse_any_workload(f: Field<'_>) -> Result<Workload, LoadError> {
    let local = f.with("interface", |i| Ok(i.is_some()))?;
    parse_workload(f, local)
}

fn parse_workload(f: Field<'_>, local: bool) -> Result<Workload, LoadError> {
    let mut keys = vec!["name", "namespace", "ips", "labels", "serviceAccount", "ports"];
    if local {
        keys.push("interface");
        keys.push("mac");
    } else {
        keys.push("node");
    }
    f.only_keys(&keys)?;
    let name = f.require("name", |n| n.string())?;
    let namespace = f.with("namespace", |n| n.map(|n| n.string()).transpose())?.unwrap_or_else(|| "default".into());
    let interface = if local { Some(f.require("interface", |i| i.string())?) } else { None };
    let ips = f.require("ips", |l| l.each(parse_ip))?;
    let labels = f.with("labels", |l| l.map(|l| l.string_map()).transpose())?.unwrap_or_default();
    // Every Kubernetes pod runs as a service account; `default` unless it says otherwise.
    let service_account =
        f.with("serviceAccount", |s| s.map(|s| s.string()).transpose())?.unwrap_or_else(|| "default".into());
    let ports = f.with("ports", |p| p.map(|p| p.each(parse_named_port)).transpose())?.unwrap_or_default();
    let mac = if local { f.with("mac", |m| m.map(mac_field).transpose())? } else { None };
    Ok(Workload { name, namespace, interface, ips, labels, service_account, ports, mac, profiles: None })
}

fn parse_service(f: Field<'_>) -> Result<Service, LoadError> {
    f.only_keys(&["name", "namespace", "protocol", "clusterIP", "port", "nodePort", "backends"])?;
    let name = f.require("name", |n| n.string())?;
    let namespace = f.with("namespace", |n| n.map(|n| n.string()).transpose())?.unwrap_or_else(|| "default".into());
    let protocol = f.with("protocol", |p| {
        p.map(|p| {
            let text = p.str()?;
            Protocol::parse(text)
                .filter(|pr| pr.has_ports())
                .ok_or_else(|| p.error(format!("expected TCP, UDP or SCTP, found '{text}'")))
        })
        .transpose()
    })?;
    let cluster_ip = f.with("clusterIP", |c| c.map(parse_ip).transpose())?;
    let port = f.require("port", |p| p.uint(65535).map(|v| v as u16))?;
    let node_port = f.with("nodePort", |p| p.map(|p| p.uint(65535).map(|v| v as u16)).transpose())?;
    let backends = f
        .with("backends", |b| {
            b.map(|b| {
                b.each(|e| {
                    let text = e.str()?;
                    text.parse::<SocketAddr>()
                        .map_err(|_| e.error(format!("'{text}' is not ip:port (IPv6 as [fd00::1]:80)")))
                })
            })
            .transpose()
        })?
        .unwrap_or_default();
    Ok(Service { name, namespace, protocol: protocol.unwrap_or(Protocol::TCP), cluster_ip, port, node_port, backends })
}
