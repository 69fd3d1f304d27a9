//! The node's services as the hot path looks them up: by (protocol, cluster IP, port) and by (protocol,
//! NodePort), compiled once per table version, instead of a scan of every service for every new flow.

use std::net::IpAddr;

use calxdp_policy::node::{NodeConfig, Service};
use calxdp_policy::resource::Protocol;

/// Where each front end leads: the index of the first service (in node order) that has it, as
/// `calxdp_policy::service::find_service` picks among services sharing a front end.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    by_cluster_ip: foldhash::HashMap<(u8, IpAddr, u16), u32>,
    by_node_port: foldhash::HashMap<(u8, u16), u32>,
}

impl ServiceIndex {
    pub fn new(node: &NodeConfig) -> ServiceIndex {
        let mut index = ServiceIndex::default();
        for (i, s) in node.services.iter().enumerate() {
            if let Some(ip) = s.cluster_ip {
                index.by_cluster_ip.entry((s.protocol.0, ip, s.port)).or_insert(i as u32);
            }
            if let Some(np) = s.node_port {
                index.by_node_port.entry((s.protocol.0, np)).or_insert(i as u32);
            }
        }
        index
    }

    /// The service a new flow to `dst:dport` reaches: its cluster IP and port, or a NodePort on one of the
    /// host's own addresses (not loopback); the first in node order when both kinds match.
    pub fn find<'n>(
        &self,
        node: &'n NodeConfig,
        is_host_ip: impl Fn(IpAddr) -> bool,
        protocol: Protocol,
        dst: IpAddr,
        dport: u16,
    ) -> Option<&'n Service> {
        let front = self.by_cluster_ip.get(&(protocol.0, dst, dport)).copied();
        let node_port = if self.by_node_port.is_empty() || dst.is_loopback() || !is_host_ip(dst) {
            None
        } else {
            self.by_node_port.get(&(protocol.0, dport)).copied()
        };
        let first = match (front, node_port) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first.map(|i| &node.services[i as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calxdp_policy::service::find_service;
    use proptest::prelude::*;

    fn service(protocol: u8, cluster: Option<u8>, port: u16, node_port: Option<u16>) -> Service {
        Service {
            name: format!("s{protocol}-{cluster:?}-{port}-{node_port:?}"),
            namespace: "default".into(),
            protocol: Protocol(protocol),
            // Cluster IP 3 is the host's own address, so a front end and a NodePort can both match.
            cluster_ip: cluster.map(|c| {
                if c == 3 {
                    IpAddr::from([192, 168, 0, 10])
                } else {
                    IpAddr::from([10, 96, 0, c])
                }
            }),
            port,
            node_port,
            backends: vec![],
        }
    }

    fn node() -> NodeConfig {
        use calxdp_policy::yaml::{parse_documents, Field, Origin};
        let text = "name: n\ninterfaces: [{name: eth0, ips: [192.168.0.10/24]}]\n";
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(text, &origin).unwrap();
        NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
    }

    proptest! {
        /// The index finds what the scan finds, for services that share front ends, NodePorts that equal
        /// cluster ports, and destinations that are the host's, loopback, a cluster IP or anything else.
        #[test]
        fn the_index_finds_the_service_the_scan_finds(
            services in prop::collection::vec(
                (prop::sample::select(vec![6u8, 17]), prop::option::of(0u8..4), 1u16..4, prop::option::of(1u16..4)),
                0..8,
            ),
            protocol in prop::sample::select(vec![6u8, 17]),
            dst in prop::sample::select(vec![
                IpAddr::from([10, 96, 0, 0]), IpAddr::from([10, 96, 0, 3]), IpAddr::from([192, 168, 0, 10]),
                IpAddr::from([127, 0, 0, 1]), IpAddr::from([8, 8, 8, 8]),
            ]),
            dport in 1u16..4,
        ) {
            let mut node = node();
            node.services = services.iter().map(|&(p, c, port, np)| service(p, c, port, np)).collect();
            let index = ServiceIndex::new(&node);
            let found = index.find(&node, |ip| node.is_host_ip(ip), Protocol(protocol), dst, dport);
            let scanned = find_service(&node, Protocol(protocol), dst, dport);
            prop_assert_eq!(found.map(|s| &s.name), scanned.map(|s| &s.name));
        }
    }
}
