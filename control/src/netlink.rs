//! The node's links, addresses and routes through rtnetlink (NETLINK_ROUTE): what `calxdp run` reads of its
//! interfaces (MTU, MAC, queue counts) and how it configures the host tap (MAC, MTU, up, the node's
//! addresses, its default route, a route per local pod).
//!
//! A netlink socket belongs to the network namespace it was created in, so a [`RouteSocket`] acts in the
//! namespace of the thread that opened it: open one where the call is made (the node's namespace, or a thread
//! moved into it), as running `ip` there did. The socket is a plain blocking one; the kernel answers every
//! request at once.

use std::fmt;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What the node needs to know of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub mtu: u32,
    /// The hardware address of an Ethernet interface (`None` for others, e.g. loopback).
    pub mac: Option<[u8; 6]>,
    pub rx_queues: usize,
    pub tx_queues: usize,
}

/// A request to the kernel, as an error names it (with the interface beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    ReadLink,
    SetMac([u8; 6]),
    SetMtu(u32),
    SetUp,
    /// An address with its prefix length (the subnet that is on-link).
    ReplaceAddress(IpAddr, u8),
    /// A route to `dst/prefix`, through a gateway or straight out of the interface.
    ReplaceRoute {
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::ReadLink => write!(f, "read interface"),
            Operation::SetMac(m) => write!(
                f,
                "set MAC address {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} on",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Operation::SetMtu(mtu) => write!(f, "set MTU {mtu} on"),
            Operation::SetUp => write!(f, "bring up"),
            Operation::ReplaceAddress(a, p) => write!(f, "put address {a}/{p} on"),
            Operation::ReplaceRoute { dst, prefix: 0, via: Some(g) } if dst.is_unspecified() => {
                write!(f, "route default via {g} through")
            }
            Operation::ReplaceRoute { dst, prefix, via: Some(g) } => write!(f, "route {dst}/{prefix} via {g} through"),
            Operation::ReplaceRoute { dst, prefix, via: None } => write!(f, "route {dst}/{prefix} through"),
        }
    }
}

/// Why a netlink request failed; the error names the operation and the interface.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// The kernel refused the request (its errno), or the socket failed on the way.
    #[error("netlink: cannot {op} {interface}: {error}")]
    Failed { op: Operation, interface: String, error: io::Error },
    /// The kernel's answer could not be read, or did not answer the question.
    #[error("netlink: cannot {op} {interface}: unexpected answer: {detail}")]
    Answer { op: Operation, interface: String, detail: String },
}

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

impl RouteSocket {
    pub fn open() -> Result<RouteSocket, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        Ok(RouteSocket { socket, sequence: 0 })
    }

    /// The interface named `name` (`RTM_GETLINK` by name).
    pub fn link(&mut self, name: &str) -> Result<LinkInfo, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answers = self.request(RouteNetlinkMessage::GetLink(msg), 0).map_err(|e| match e {
            Failure::Kernel(e) if e.raw_os_error() == Some(libc::ENODEV) => NetlinkError::NoInterface(name.to_string()),
            e => e.naming(Operation::ReadLink, name),
        })?;
        let link = answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        });
        let Some(link) = link else {
            return Err(Failure::Answer("no link in the answer".into()).naming(Operation::ReadLink, name));
        };
        let mut info = LinkInfo { index: link.header.index, mtu: 1500, mac: None, rx_queues: 1, tx_queues: 1 };
        let ether = link.header.link_layer_type == LinkLayerType::Ether;
        for a in link.attributes {
            match a {
                LinkAttribute::Mtu(m) => info.mtu = m,
                LinkAttribute::Address(a) if ether => info.mac = a.try_into().ok(),
                LinkAttribute::NumRxQueues(q) => info.rx_queues = q as usize,
                LinkAttribute::NumTxQueues(q) => info.tx_queues = q as usize,
                _ => {}
            }
        }
        Ok(info)
    }

    /// Sets the interface's MAC address, as `ip link set dev NAME address MAC`.
    pub fn set_mac(&mut self, name: &str, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.set_link(name, Operation::SetMac(mac), |m| m.attributes.push(LinkAttribute::Address(mac.to_vec())))
    }

    /// Sets the interface's MTU, as `ip link set dev NAME mtu MTU`.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(name, Operation::SetMtu(mtu), |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    /// Brings the interface up, as `ip link set dev NAME up`.
    pub fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.set_link(name, Operation::SetUp, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Puts `addr/prefix` on the interface, replacing it if it is there, as `ip addr replace`.
    pub fn replace_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let op = Operation::ReplaceAddress(addr, prefix);
        let index = self.index(name, &op)?;
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        // Local and peer address alike, as `ip` sends them for an address without a peer.
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        self.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
            .map(drop)
            .map_err(|e| e.naming(op, name))
    }

    /// Routes `dst/prefix` (the default route when the prefix is 0) out of the interface, through `via` or
    /// on-link, in the main table, replacing a route to the same destination: `ip route replace`.
    pub fn replace_route(
        &mut self,
        name: &str,
        dst: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
    ) -> Result<(), NetlinkError> {
        let op = Operation::ReplaceRoute { dst, prefix, via };
        let index = self.index(name, &op)?;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        // A route without a gateway reaches only the link's own hosts (`ip` gives it link scope too).
        msg.header.scope = if via.is_some() { RouteScope::Universe } else { RouteScope::Link };
        if prefix > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(g) = via {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
            .map(drop)
            .map_err(|e| e.naming(op, name))
    }

    /// The interface's index, for a request about `op`.
    fn index(&mut self, name: &str, op: &Operation) -> Result<u32, NetlinkError> {
        self.link(name).map(|l| l.index).map_err(|e| match e {
            NetlinkError::Failed { interface, error, .. } => NetlinkError::Failed { op: op.clone(), interface, error },
            e => e,
        })
    }

    /// `RTM_NEWLINK` on the interface named `name` with what `change` puts in.
    fn set_link(
        &mut self,
        name: &str,
        op: Operation,
        change: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(name, &op)?;
        change(&mut msg);
        self.request(RouteNetlinkMessage::NewLink(msg), 0).map(drop).map_err(|e| e.naming(op, name))
    }

    /// Sends `msg` as a request asking for an acknowledgement and collects what the kernel answers until
    /// the acknowledgement (or the error that replaces it).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(Failure::Socket)?;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(Failure::Socket)?;
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| Failure::Answer(e.to_string()))?;
                let len = (m.header.length as usize).min(rest.len());
                if len == 0 {
                    return Err(Failure::Answer("a message of length 0".into()));
                }
                rest = &rest[len..];
                if m.header.sequence_number != self.sequence {
                    continue; // an answer to an earlier request that gave up
                }
                match m.payload {
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                    NetlinkPayload::Error(e) => return Err(Failure::Kernel(e.to_io())),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }
}

/// A request's failure, before the operation and interface are put to it.
#[derive(Debug)]
enum Failure {
    Socket(io::Error),
    Kernel(io::Error),
    Answer(String),
}

impl Failure {
    fn naming(self, op: Operation, interface: &str) -> NetlinkError {
        let interface = interface.to_string();
        match self {
            Failure::Socket(error) | Failure::Kernel(error) => NetlinkError::Failed { op, interface, error },
            Failure::Answer(detail) => NetlinkError::Answer { op, interface, detail },
        }
    }
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The interface named `name` in the calling thread's network namespace; `None` if it does not exist (or
/// netlink cannot be reached).
pub fn link_info(name: &str) -> Option<LinkInfo> {
    RouteSocket::open().and_then(|mut s| s.link(name)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{ip, Namespaces};
    use calxdp_dataplane::sys::netns;

    /// What `ip -o -d link show` says of `dev` in namespace `ns`, as the words after each key.
    fn ip_link(ns: &str, dev: &str) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "-o", "-d", "link", "show", "dev", dev])
            .output()
            .expect("ip runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    fn after<'a>(words: &'a [String], key: &str) -> &'a str {
        let at = words.iter().position(|w| w == key).unwrap_or_else(|| panic!("no {key} in {words:?}"));
        &words[at + 1]
    }

    #[test]
    #[ignore = "needs root (network namespaces): scripts/test runs it with --include-ignored as root"]
    fn link_info_reads_what_ip_shows_in_the_calling_threads_namespace() {
        let ns = format!("cxnl-link-{}", std::process::id());
        let mut made = Namespaces::default();
        made.add(&ns).unwrap();
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "nla",
            "numtxqueues",
            "3",
            "numrxqueues",
            "5",
            "type",
            "veth",
            "peer",
            "name",
            "nlb",
        ])
        .unwrap();
        ip(&["-n", &ns, "link", "set", "dev", "nla", "mtu", "1432", "address", "02:77:00:00:00:0a"]).unwrap();

        for dev in ["nla", "nlb", "lo"] {
            let got = netns::run_in(&ns, move || link_info(dev)).unwrap().unwrap_or_else(|| panic!("{dev} is read"));
            let words = ip_link(&ns, dev);
            let want = LinkInfo {
                index: got.index,
                mtu: after(&words, "mtu").parse().unwrap(),
                mac: words
                    .iter()
                    .position(|w| w == "link/ether")
                    .and_then(|i| calxdp_policy::node::parse_mac(&words[i + 1])),
                rx_queues: after(&words, "numrxqueues").parse().unwrap(),
                tx_queues: after(&words, "numtxqueues").parse().unwrap(),
            };
            assert_eq!(got, want, "{dev}: {words:?}");
            assert_eq!(words[0].trim_end_matches(':').parse::<u32>().unwrap(), got.index, "{dev}");
        }
        let nla = netns::run_in(&ns, || link_info("nla")).unwrap().unwrap();
        assert_eq!((nla.mtu, nla.mac, nla.rx_queues, nla.tx_queues), (1432, Some([2, 0x77, 0, 0, 0, 0xa]), 5, 3));
        assert_eq!(netns::run_in(&ns, || link_info("lo")).unwrap().unwrap().mac, None, "loopback has no MAC");

        // The socket is the calling thread's: the namespace's veth is not in this one.
        assert_eq!(link_info("nla"), None);
        let missing = netns::run_in(&ns, || RouteSocket::open().unwrap().link("nosuch").unwrap_err()).unwrap();
        assert!(matches!(&missing, NetlinkError::NoInterface(n) if n == "nosuch"), "{missing:?}");
        assert_eq!(missing.to_string(), "interface nosuch does not exist");
    }

    #[test]
    #[ignore = "needs root (network namespaces): scripts/test runs it with --include-ignored as root"]
    fn a_refused_request_names_the_operation_and_the_interface() {
        let ns = format!("cxnl-err-{}", std::process::id());
        let mut made = Namespaces::default();
        made.add(&ns).unwrap();
        ip(&["-n", &ns, "link", "add", "nla", "type", "veth", "peer", "name", "nlb"]).unwrap();
        let (mtu, route) = netns::run_in(&ns, || {
            let mut s = RouteSocket::open().unwrap();
            let mtu = s.set_mtu("nla", 1 << 20).unwrap_err();
            // The gateway is on no subnet of the link.
            let route = s.replace_route("nla", "0.0.0.0".parse().unwrap(), 0, Some("10.99.0.1".parse().unwrap()));
            (mtu, route.unwrap_err())
        })
        .unwrap();
        assert!(
            matches!(&mtu, NetlinkError::Failed { op: Operation::SetMtu(1048576), interface, error }
                if interface == "nla" && error.raw_os_error() == Some(libc::EINVAL)),
            "{mtu:?}"
        );
        assert_eq!(mtu.to_string(), "netlink: cannot set MTU 1048576 on nla: Invalid argument (os error 22)");
        assert!(route.to_string().starts_with("netlink: cannot route default via 10.99.0.1 through nla: "), "{route}");
    }
}
