//! What the pipeline knows about the node's ports, resolved once per table version so the hot path never
//! looks up a name: which host endpoint governs each uplink and `lo`, the `*` host endpoint, the local
//! workloads by address, and routes (DESIGN.md "The node").

use std::net::IpAddr;

use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::{ResolvedNode, LOOPBACK};

use crate::ports::PortId;
use crate::routes::RouteTable;

/// Where a frame enters or leaves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// An uplink, by index in the node's interfaces.
    Uplink(u16),
    /// A local pod's interface, by index in the node's workloads.
    Workload(u16),
    /// The host's own network stack (the tap).
    Host,
}

impl Port {
    /// The port's name as the node file gives it (`host` for the tap).
    pub fn name_in(self, node: &NodeConfig) -> String {
        match self {
            Port::Host => "host".into(),
            Port::Uplink(u) => node.uplinks[u as usize].name.clone(),
            Port::Workload(w) => node.workloads[w as usize].name.clone(),
        }
    }
}

/// Where routing sends a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To one of the host's addresses.
    Local,
    Workload(u16),
    Uplink(u16),
}

/// Port bindings of one table version.
#[derive(Debug, Default)]
pub struct PortMap {
    /// The named host endpoint of each uplink (index in `ResolvedNode::host_endpoints`).
    pub uplink_hep: Vec<Option<u32>>,
    /// The named host endpoint of `lo`, where host-to-own-address traffic crosses.
    pub loopback_hep: Option<u32>,
    pub star_hep: Option<u32>,
    /// Routes and the owners of local addresses, compiled.
    pub routes: RouteTable,
    pub host_ips: Vec<IpAddr>,
    /// Each uplink's MAC and its gateway's MAC, where configured.
    pub uplink_mac: Vec<Option<[u8; 6]>>,
    pub gateway_mac: Vec<Option<[u8; 6]>>,
    /// Each local pod's MAC, where configured.
    pub workload_mac: Vec<Option<[u8; 6]>>,
    pub uplink_nets: Vec<Vec<calxdp_policy::net::IpNet>>,
    /// Each local pod's port id (`ports.rs`), and the pod of each port id (`None`: not a pod of this
    /// version, e.g. one being attached or detached).
    pub workload_port: Vec<PortId>,
    pub port_workload: Vec<Option<u16>>,
}

/// The MAC Calico gives the host side of every pod veth, so pods never need to learn another.
pub const WORKLOAD_GATEWAY_MAC: [u8; 6] = [0xee; 6];

impl PortMap {
    /// Port bindings with pods numbered after the uplinks and the host, in node order.
    pub fn new(world: &ResolvedNode) -> PortMap {
        let first = world.node.uplinks.len() as PortId + 1;
        let ids = (0..world.node.workloads.len() as PortId).map(|w| first + w).collect();
        PortMap::with_workload_ports(world, ids)
    }

    /// Port bindings with each pod's port id given (same order as the node's workloads).
    pub fn with_workload_ports(world: &ResolvedNode, workload_port: Vec<PortId>) -> PortMap {
        let node = &world.node;
        let named = |iface: &str| world.interface_hep.get(iface).map(|&h| h as u32);
        assert_eq!(workload_port.len(), node.workloads.len(), "a port id per local workload");
        let top = workload_port.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut port_workload = vec![None; top];
        for (w, id) in workload_port.iter().enumerate() {
            port_workload[*id as usize] = Some(w as u16);
        }
        PortMap {
            workload_port,
            port_workload,
            uplink_hep: node.uplinks.iter().map(|u| named(&u.name)).collect(),
            loopback_hep: named(LOOPBACK),
            star_hep: world.star_hep.map(|h| h as u32),
            routes: RouteTable::new(node),
            host_ips: node.uplinks.iter().flat_map(|u| u.addrs.iter().copied()).collect(),
            uplink_mac: node.uplinks.iter().map(|u| u.mac).collect(),
            gateway_mac: node.uplinks.iter().map(|u| u.gateway_mac).collect(),
            workload_mac: node.workloads.iter().map(|w| w.mac).collect(),
            uplink_nets: node.uplinks.iter().map(|u| u.ips.clone()).collect(),
        }
    }

    /// The port a frame with port id `id` arrived on, in this version; `None` for a port id that is no
    /// pod of this version.
    #[inline]
    pub fn port_of_id(&self, id: PortId) -> Option<Port> {
        let uplinks = self.uplink_hep.len() as PortId;
        if id < uplinks {
            Some(Port::Uplink(id))
        } else if id == uplinks {
            Some(Port::Host)
        } else {
            self.port_workload.get(id as usize).copied().flatten().map(Port::Workload)
        }
    }

    /// The port id of a port of this version.
    #[inline]
    pub fn id_of(&self, p: Port) -> PortId {
        match p {
            Port::Uplink(u) => u,
            Port::Host => self.uplink_hep.len() as PortId,
            Port::Workload(w) => self.workload_port[w as usize],
        }
    }

    /// Whether `ip` is inside one of uplink `u`'s subnets (reachable without the gateway).
    pub fn uplink_on_link(&self, u: u16, ip: IpAddr) -> bool {
        self.uplink_nets.get(u as usize).is_some_and(|nets| nets.iter().any(|n| n.contains(ip)))
    }

    pub fn is_host_ip(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.host_ips.contains(&ip)
    }

    /// The host endpoint of an uplink: its own, else `*`.
    pub fn uplink_or_star(&self, u: u16) -> Option<u32> {
        self.uplink_hep.get(u as usize).copied().flatten().or(self.star_hep)
    }

    /// The host endpoint of `lo`: its own, else `*`.
    pub fn loopback_or_star(&self) -> Option<u32> {
        self.loopback_hep.or(self.star_hep)
    }

    /// Where routing sends a packet to `dst` ([`RouteTable::route`]).
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Route {
        self.routes.route(dst)
    }

    /// The local pod that owns `ip`.
    #[inline]
    pub fn workload_of(&self, ip: IpAddr) -> Option<u16> {
        self.routes.workload(ip)
    }
}
