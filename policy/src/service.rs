//! Service NAT as kube-proxy programs it: ClusterIP and NodePort destinations are rewritten to a backend
//! (semantics §3 "What addresses policy sees"). Shared by the reference model and the dataplane so both
//! pick the same backend for the same flow.

use std::net::{IpAddr, SocketAddr};

use crate::node::{NodeConfig, Service};
use crate::resource::Protocol;

/// The destination a service flow is rewritten to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceNat {
    /// DNAT to this backend.
    Backend(SocketAddr),
    /// The service exists but has no backends: kube-proxy rejects.
    NoBackends,
}

/// The service a new flow to `dst:dport` hits, if any: a ClusterIP, or a NodePort on any host address.
pub fn find_service(node: &NodeConfig, protocol: Protocol, dst: IpAddr, dport: u16) -> Option<&Service> {
    node.services.iter().find(|s| {
        s.protocol == protocol
            && ((s.cluster_ip == Some(dst) && s.port == dport)
                || (s.node_port == Some(dport) && node.is_host_ip(dst) && !dst.is_loopback()))
    })
}

/// The backend for a flow from `src:sport`: a stable hash, so every level picks the same one.
pub fn pick_backend(service: &Service, src: IpAddr, sport: u16) -> ServiceNat {
    if service.backends.is_empty() {
        return ServiceNat::NoBackends;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    match src {
        IpAddr::V4(a) => a.octets().iter().for_each(|b| feed(*b)),
        IpAddr::V6(a) => a.octets().iter().for_each(|b| feed(*b)),
    }
    sport.to_be_bytes().iter().for_each(|b| feed(*b));
    ServiceNat::Backend(service.backends[(h % service.backends.len() as u64) as usize])
}
