//! The fields of a packet that policy, conntrack and service NAT look at, independent of how the packet
//! was carried (a parity step, a parsed frame).

use std::net::IpAddr;

use crate::net::IpFamily;
use crate::resource::rule::Protocol;

/// TCP flag bits as they sit in the TCP header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// A packet's L3/L4 summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    /// L4 ports for TCP, UDP, SCTP and UDPLite; 0 otherwise.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags (see [`tcp_flags`]); 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type, code and echo identifier; zero for other protocols.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub icmp_id: u16,
}

impl PacketHeader {
    /// Unspecified IPv4 addresses, protocol 0, every other field 0: the header of a frame that is not IP,
    /// and the base to fill in (`PacketHeader { src, dst, ..PacketHeader::EMPTY }`).
    pub const EMPTY: PacketHeader = PacketHeader {
        src: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        protocol: Protocol(0),
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
    };

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.src)
    }

    /// Whether the packet has L4 ports that rules can match (semantics §3 "Ports").
    pub fn has_ports(&self) -> bool {
        matches!(self.protocol, Protocol::TCP | Protocol::UDP | Protocol::SCTP | Protocol::UDPLITE)
    }

    pub fn is_icmp(&self) -> bool {
        matches!(self.protocol, Protocol::ICMP | Protocol::ICMPV6)
    }

    /// ICMP echo request or reply (v4 8/0, v6 128/129): tracked as a flow by its identifier.
    pub fn is_icmp_echo(&self) -> bool {
        match self.protocol {
            Protocol::ICMP => matches!(self.icmp_type, 0 | 8),
            Protocol::ICMPV6 => matches!(self.icmp_type, 128 | 129),
            _ => false,
        }
    }

    /// ICMP errors that quote another packet (destination unreachable, time exceeded, parameter problem,
    /// and for v6 packet too big): conntrack calls them RELATED to the flow they quote.
    pub fn is_icmp_error(&self) -> bool {
        match self.protocol {
            Protocol::ICMP => matches!(self.icmp_type, 3 | 4 | 5 | 11 | 12),
            Protocol::ICMPV6 => matches!(self.icmp_type, 1..=4),
            _ => false,
        }
    }
}
