//! The identities every layer passes around: a flow's direction as conntrack keys it, and a local endpoint
//! by its place in the node. Kept apart from the reference evaluator so the dataplane can name them
//! without depending on it.

use std::net::IpAddr;

use crate::packet::PacketHeader;
use crate::resolve::{Endpoint, ResolvedNode};
use crate::resource::Protocol;

/// One direction of a flow, as conntrack keys it. An ICMP echo's identifier and direction stand in the ports
/// ([`Tuple::echo`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    pub fn of(pkt: &PacketHeader) -> Tuple {
        let (src_port, dst_port) = Tuple::ports_of(pkt);
        Tuple { src: pkt.src, dst: pkt.dst, protocol: pkt.protocol, src_port, dst_port }
    }

    /// An echo request's (or reply's) tuple. Linux keys echo on the message type as well as the identifier:
    /// (request, id) one way and (reply, id) back, so a reply sent the way the request went, or a request
    /// sent back by the responder, is not the flow (the first is INVALID, the second a new flow). The ports
    /// hold it as (id, id+1) for a request and (id+1, id) for a reply: reversing one gives the other, and no
    /// request's pair is any reply's (that would need id+2 == id).
    pub fn echo(src: IpAddr, dst: IpAddr, protocol: Protocol, request: bool, id: u16) -> Tuple {
        let (src_port, dst_port) = Tuple::echo_ports(request, id);
        Tuple { src, dst, protocol, src_port, dst_port }
    }

    /// The (source, destination) ports an echo request's or reply's tuple holds ([`Tuple::echo`]).
    #[inline]
    pub fn echo_ports(request: bool, id: u16) -> (u16, u16) {
        let next = id.wrapping_add(1);
        if request {
            (id, next)
        } else {
            (next, id)
        }
    }

    /// The (source, destination) ports of the tuple of `pkt` ([`Tuple::of`]).
    #[inline]
    pub fn ports_of(pkt: &PacketHeader) -> (u16, u16) {
        if pkt.has_ports() {
            (pkt.src_port, pkt.dst_port)
        } else if pkt.is_icmp_echo() {
            Tuple::echo_ports(matches!(pkt.icmp_type, 8 | 128), pkt.icmp_id)
        } else {
            (0, 0)
        }
    }

    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// A local endpoint: a pod by its index in the node's workloads, or a host endpoint by its index in
/// [`ResolvedNode::host_endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointRef {
    Workload(usize),
    Host(usize),
}

impl EndpointRef {
    pub fn endpoint(self, world: &ResolvedNode) -> &Endpoint {
        match self {
            EndpointRef::Workload(i) => &world.workloads[i],
            EndpointRef::Host(h) => &world.host_endpoints[h].endpoint,
        }
    }
}
