//! The kernel level: Linux itself as the oracle. Each scenario's node is a network namespace programmed by
//! `calxdp render iptables` (Felix's iptables-legacy ruleset and IP sets, kube-proxy's service NAT), with
//! the sysctls, routes and neighbours Felix and Calico's CNI give a node; its uplinks and pod interfaces are
//! veths whose other ends are in a wire namespace. Frames are written to the wire as the live level writes
//! them; a step `in: host` is sent by the node namespace's own stack (a raw IP socket), so the kernel runs
//! OUTPUT for it as for a host process. The verdict and egress are read on the wire (or from the
//! local-delivery counter, for `out: host`), `translated` from the frame that arrived (or the conntrack
//! entry), `tracked` from `conntrack -L`, `logged` from the packet counters of the LOG rules, and the
//! reason from the DROP (or ACCEPT) rules whose counters moved. `advance` ages conntrack entries by
//! lowering their timeouts (`conntrack -U --timeout`) and deleting those that run out. docs/kernel-oracle.md
//! says what this level can and cannot tell.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use calxdp_dataplane::path::Port;
use calxdp_dataplane::sys::netns;
use calxdp_dataplane::sys::packet::PacketSocket;
use calxdp_dataplane::sys::rawip::RawIpSocket;
use calxdp_dataplane::wire::parse;
use calxdp_policy::ids::Tuple;
use calxdp_policy::net::IpFamily;
use calxdp_policy::node::{removed_workload_addresses, NodeConfig};
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::Attach;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::{Protocol, ResourceSet};
use calxdp_policy::verdict::{Outcome, Reason, Verdict};

use super::pipeline_level::step_frame;
use super::{Dataplane, StepError};
use crate::live::{interfaces, ip, Namespaces};
use crate::render::apply::{self, run_in};
use crate::render::{self, Ruleset};

/// The mark the test's own host packets carry; everything else the node's stack emits (RSTs for closed
/// ports, ICMP errors, echo replies, neighbour discovery) is dropped before conntrack sees it, because the
/// scenario plays the host stack itself.
const TEST_MARK: u32 = 0x8;
/// How long a frame may take to come out of the node (ARP included) before the step counts as not
/// forwarded.
const QUIET: Duration = Duration::from_millis(25);
/// The comment of the harness rules, so explanations leave them out.
const HARNESS: &str = "calxdp-kernel-oracle";
/// Felix's (and Calico's CNI) MAC for the host side of a pod's veth.
const VETH_MAC: [u8; 6] = [0xee; 6];

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One interface of the node and the wire end facing it.
#[derive(Debug)]
struct Wire {
    /// The node-side interface name.
    name: String,
    /// Its MAC: frames from the wire are addressed to it.
    mac: [u8; 6],
    sock: PacketSocket,
}

/// A scenario's node, in the kernel.
#[derive(Debug)]
pub struct KernelLevel {
    /// The node as the kernel has it (pod interfaces renamed where Felix would not see them as pods).
    node: NodeConfig,
    resources: ResourceSet,
    node_ns: String,
    wire_ns: String,
    wires: Vec<Wire>,
    raw4: RawIpSocket,
    raw6: RawIpSocket,
    /// Next-hop addresses already given a permanent IPv6 neighbour entry.
    neighbours: BTreeSet<(String, IpAddr)>,
    names: KernelNames,
    tcp: TcpSequences,
    next_peer: usize,
    _ns: Namespaces,
}

/// Whether this process can run the kernel level; the reason if not.
pub fn unavailable() -> Option<String> {
    if !crate::live::is_root() {
        return Some("the kernel level needs root (network namespaces, iptables, conntrack)".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("the kernel level needs iproute2's `ip`".into());
    }
    apply::missing_tool().map(|t| format!("the kernel level needs the iptables tools: {t}"))
}

/// The MAC a wire host with address `a` has (the one it answers neighbour requests with).
fn wire_mac(a: IpAddr) -> [u8; 6] {
    crate::wire_hosts::mac_of(a)
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The kernel's name for each pod interface, by (namespace, pod, the scenario's interface name).
type KernelNames = BTreeMap<(String, String, String), String>;

/// Felix sees an interface as a pod's by its prefix (`cali`); a name without it, or too long for the
/// kernel, gets a stand-in (the name is only a name: no selector sees it). A pod keeps its kernel name
/// while the scenario keeps its interface.
fn kernel_names(node: &mut NodeConfig, known: &mut KernelNames) {
    let mut used: BTreeSet<String> = node.uplinks.iter().map(|u| u.name.clone()).collect();
    let key = |w: &calxdp_policy::node::Workload, i: &str| (w.namespace.clone(), w.name.clone(), i.to_string());
    for w in &node.workloads {
        if let Some(k) = w.interface.as_deref().and_then(|i| known.get(&key(w, i))) {
            used.insert(k.clone());
        }
    }
    for w in &mut node.workloads {
        let Some(i) = w.interface.clone() else { continue };
        if let Some(k) = known.get(&key(w, &i)) {
            w.interface = Some(k.clone());
            continue;
        }
        let name = if i.starts_with(render::WORKLOAD_PREFIX) && i.len() < 16 && !used.contains(&i) {
            i.clone()
        } else {
            (0..).map(|k| format!("calik{k}")).find(|n| !used.contains(n)).unwrap_or_default()
        };
        used.insert(name.clone());
        known.insert(key(w, &i), name.clone());
        w.interface = Some(name);
    }
}

fn sysctl(ns: &str, path: &str, value: &str) -> Result<(), StepError> {
    let (p, v) = (format!("/proc/sys/{path}"), value.to_string());
    netns::run_in(ns, move || std::fs::write(&p, v).map_err(|e| format!("{p}: {e}")))
        .map_err(|e| format!("entering namespace {ns}: {e}"))??;
    Ok(())
}

impl KernelLevel {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> Result<KernelLevel, StepError> {
        if let Some(why) = unavailable() {
            return Err(why.into());
        }
        let mut node = node.clone();
        let mut names = KernelNames::new();
        kernel_names(&mut node, &mut names);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (node_ns, wire_ns) = (format!("cxk{pid}n{k}"), format!("cxk{pid}w{k}"));
        let mut ns = Namespaces::default();
        ns.add(&node_ns)?;
        ns.add(&wire_ns)?;
        // The node routes IPv6 too (Namespaces turns it off by default); no DAD, no router solicitations.
        for f in ["all", "default"] {
            sysctl(&node_ns, &format!("net/ipv6/conf/{f}/disable_ipv6"), "0")?;
            sysctl(&node_ns, &format!("net/ipv6/conf/{f}/accept_dad"), "0")?;
            sysctl(&node_ns, &format!("net/ipv6/conf/{f}/router_solicitations"), "0")?;
        }
        // Felix's global settings (notes §12.1).
        sysctl(&node_ns, "net/ipv4/ip_forward", "1")?;
        sysctl(&node_ns, "net/ipv6/conf/all/forwarding", "1")?;
        let raw4 = netns::run_in(&node_ns, || RawIpSocket::open(false, TEST_MARK))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("raw IPv4 socket in the node namespace: {e}"))?;
        let raw6 = netns::run_in(&node_ns, || RawIpSocket::open(true, TEST_MARK))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("raw IPv6 socket in the node namespace: {e}"))?;
        let mut level = KernelLevel {
            node: node.clone(),
            resources: resources.clone(),
            node_ns,
            wire_ns,
            wires: Vec::new(),
            raw4,
            raw6,
            neighbours: BTreeSet::new(),
            names,
            tcp: TcpSequences::default(),
            next_peer: 0,
            _ns: ns,
        };
        for (i, u) in node.uplinks.iter().enumerate() {
            let mac = u.mac.unwrap_or([0x02, 0xca, 0x1c, 0, 1, i as u8]);
            level.add_wire(&u.name, mac)?;
            for (net, addr) in u.ips.iter().zip(&u.addrs) {
                let cidr = format!("{addr}/{}", net.prefix_len());
                ip(&["-n", &level.node_ns, "addr", "add", &cidr, "dev", &u.name, "nodad"])?;
            }
        }
        level.default_routes()?;
        for w in node.workloads.clone() {
            level.add_workload(&w)?;
        }
        // The harness: the test's packets are the only ones the host stack sends; local delivery is
        // counted after filter INPUT (the security table runs after it, before the socket). A port
        // unreachable the host sends itself over lo is a REJECT's answer to a host packet: counted apart.
        let security = |answer: &str| {
            format!(
                "*security\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo {answer} -m comment --comment \"{HARNESS}: answered\" -j RETURN\n-A INPUT -m comment --comment \"{HARNESS}: delivered\"\nCOMMIT\n"
            )
        };
        let (v4, v6) =
            (security("-p icmp -m icmp --icmp-type 3/3"), security("-p ipv6-icmp -m icmp6 --icmpv6-type 1/4"));
        run_in(Some(&level.node_ns), "iptables-legacy-restore", &[], Some(&v4))?;
        run_in(Some(&level.node_ns), "ip6tables-legacy-restore", &[], Some(&v6))?;
        level.program()?;
        level.conntrack_settings();
        Ok(level)
    }

    /// A veth `name` in the node namespace with `mac`, its peer in the wire namespace, and a packet socket
    /// on the peer.
    fn add_wire(&mut self, name: &str, mac: [u8; 6]) -> Result<(), StepError> {
        let peer = format!("w{}", self.next_peer);
        self.next_peer += 1;
        let (n, w) = (self.node_ns.clone(), self.wire_ns.clone());
        ip(&["link", "add", name, "netns", &n, "type", "veth", "peer", "name", &peer, "netns", &w])?;
        ip(&["-n", &n, "link", "set", "dev", name, "address", &mac_text(mac)])?;
        ip(&["-n", &n, "link", "set", name, "up"])?;
        ip(&["-n", &w, "link", "set", &peer, "up"])?;
        let p = peer.clone();
        let sock = netns::run_in(&w, move || PacketSocket::open(&p))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("packet socket on {peer}: {e}"))?;
        self.wires.push(Wire { name: name.to_string(), mac, sock });
        Ok(())
    }

    /// A pod's veth as Calico's CNI and Felix set it up (notes §12.2, §12.3): the host side's MAC,
    /// proxy ARP/NDP, forwarding, a /32 (/128) route per address, a permanent neighbour for IPv4.
    fn add_workload(&mut self, w: &calxdp_policy::node::Workload) -> Result<(), StepError> {
        let Some(iface) = w.interface.clone() else { return Ok(()) };
        self.add_wire(&iface, VETH_MAC)?;
        let n = self.node_ns.clone();
        let rp = netns::run_in(&n, || std::fs::read_to_string("/proc/sys/net/ipv4/conf/default/rp_filter"))
            .map_err(|e| e.to_string())?
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "1".into());
        for (path, v) in [
            (format!("net/ipv6/conf/{iface}/accept_ra"), "0"),
            (format!("net/ipv4/conf/{iface}/route_localnet"), "1"),
            (format!("net/ipv4/neigh/{iface}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{iface}/proxy_arp"), "1"),
            (format!("net/ipv4/conf/{iface}/forwarding"), "1"),
            (format!("net/ipv4/conf/{iface}/rp_filter"), rp.as_str()),
            (format!("net/ipv6/conf/{iface}/proxy_ndp"), "1"),
            (format!("net/ipv6/conf/{iface}/forwarding"), "1"),
        ] {
            sysctl(&n, &path, v)?;
        }
        for a in &w.ips {
            let (cidr, fam) = match a {
                IpAddr::V4(_) => (format!("{a}/32"), "-4"),
                IpAddr::V6(_) => (format!("{a}/128"), "-6"),
            };
            ip(&["-n", &n, fam, "route", "replace", &cidr, "dev", &iface])?;
            let mac = mac_text(w.mac.unwrap_or(wire_mac(*a)));
            if a.is_ipv4() {
                ip(&["-n", &n, "neigh", "replace", &a.to_string(), "lladdr", &mac, "dev", &iface, "nud", "permanent"])?;
            } else {
                self.neighbours.insert((iface.clone(), *a));
                ip(&[
                    "-n",
                    &n,
                    "-6",
                    "neigh",
                    "replace",
                    &a.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    &iface,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(())
    }

    /// The node's default routes: via the first uplink with a gateway of the family, else on-link out of
    /// the first uplink (where calxdp sends what no subnet holds).
    fn default_routes(&self) -> Result<(), StepError> {
        let Some(first) = self.node.uplinks.first() else { return Ok(()) };
        for fam in [IpFamily::V4, IpFamily::V6] {
            let flag = if fam == IpFamily::V4 { "-4" } else { "-6" };
            let via = self
                .node
                .uplinks
                .iter()
                .find_map(|u| u.gateways.iter().copied().find(|g| IpFamily::of(*g) == fam).map(|g| (g, u)));
            match via {
                Some((g, u)) => ip(&[
                    "-n",
                    &self.node_ns,
                    flag,
                    "route",
                    "replace",
                    "default",
                    "via",
                    &g.to_string(),
                    "dev",
                    &u.name,
                ])?,
                None => ip(&["-n", &self.node_ns, flag, "route", "replace", "default", "dev", &first.name])?,
            }
        }
        Ok(())
    }

    /// Conntrack timeouts as the node's configuration gives them (its defaults are the kernel's, with
    /// kube-proxy's ESTABLISHED and CLOSE_WAIT), and Felix's accounting. Best effort: a kernel without one
    /// of these keeps its own.
    fn conntrack_settings(&self) {
        let t = &self.node.felix.conntrack_timeouts;
        let s = |d: Duration| d.as_secs().max(1).to_string();
        for (key, v) in [
            ("nf_conntrack_acct", "1".to_string()),
            ("nf_conntrack_tcp_timeout_syn_sent", s(t.tcp_syn_sent)),
            ("nf_conntrack_tcp_timeout_syn_recv", s(t.tcp_syn_recv)),
            ("nf_conntrack_tcp_timeout_established", s(t.tcp_established)),
            ("nf_conntrack_tcp_timeout_fin_wait", s(t.tcp_fin_wait)),
            ("nf_conntrack_tcp_timeout_close_wait", s(t.tcp_close_wait)),
            ("nf_conntrack_tcp_timeout_last_ack", s(t.tcp_last_ack)),
            ("nf_conntrack_tcp_timeout_time_wait", s(t.tcp_time_wait)),
            ("nf_conntrack_tcp_timeout_close", s(t.tcp_close)),
            ("nf_conntrack_udp_timeout", s(t.udp_unreplied)),
            ("nf_conntrack_udp_timeout_stream", s(t.udp_replied)),
            ("nf_conntrack_icmp_timeout", s(t.icmp)),
            ("nf_conntrack_icmpv6_timeout", s(t.icmp)),
            ("nf_conntrack_generic_timeout", s(t.generic)),
        ] {
            let _ = sysctl(&self.node_ns, &format!("net/netfilter/{key}"), &v);
        }
    }

    /// Renders the node and its resources and loads them, with the harness's first rules in raw OUTPUT:
    /// nothing but the test's packets leaves the host stack, except port unreachables (the REJECT target's
    /// answers, which go on through Felix's chains like any packet the host sends).
    fn program(&mut self) -> Result<(), StepError> {
        let world = ResolvedNode::new(&self.node, &self.resources);
        let rules: Ruleset = render::render(&world);
        let drop = |what: &str, icmp: &str| {
            (
                "raw",
                format!(
                    "-A OUTPUT -m comment --comment \"{HARNESS}: only the test's packets leave the host stack\" -m mark ! --mark {TEST_MARK:#x}/{TEST_MARK:#x} {what} {icmp} -j DROP"
                ),
            )
        };
        let prelude = [drop("! -p icmp", ""), drop("-p icmp", "-m icmp ! --icmp-type 3/3")];
        let prelude6 = [drop("! -p ipv6-icmp", ""), drop("-p ipv6-icmp", "-m icmp6 ! --icmpv6-type 1/4")];
        Ok(apply::apply(Some(&self.node_ns), &rules, &prelude, &prelude6)?)
    }

    fn wire_of(&self, port: Port) -> Option<&Wire> {
        let name = interfaces(&self.node).into_iter().find(|(p, _)| *p == port)?.1;
        self.wires.iter().find(|w| w.name == name)
    }

    fn port_of_wire(&self, name: &str) -> Option<Port> {
        interfaces(&self.node).into_iter().find(|(_, n)| n == name).map(|(p, _)| p)
    }

    /// Answers what the node asks the wire (ARP, neighbour solicitations) and returns what else came.
    fn read_wires(&self, buf: &mut [u8], mut each: impl FnMut(&Wire, &[u8])) {
        for w in &self.wires {
            while let Some(n) = w.sock.recv(buf) {
                let frame = &buf[..n];
                if let Some(reply) = crate::wire_hosts::answer(frame) {
                    let _ = w.sock.send(&reply);
                    continue;
                }
                if crate::wire_hosts::is_resolution(frame) {
                    continue;
                }
                each(w, frame);
            }
        }
    }

    /// IPv6 next hops get permanent neighbour entries before a packet needs them: the node's neighbour
    /// solicitations would otherwise meet host-endpoint egress policy (as on a real node), which is not
    /// what a step is about.
    fn ensure_neighbours(&mut self, pkt: &PacketHeader) -> Result<(), StepError> {
        let mut targets = vec![pkt.dst];
        if let Some(svc) = calxdp_policy::service::find_service(&self.node, pkt.protocol, pkt.dst, pkt.dst_port) {
            targets.extend(svc.backends.iter().map(|b| b.ip()));
        }
        for t in targets.into_iter().filter(|t| t.is_ipv6() && !self.node.is_host_ip(*t)) {
            let route = run_in(None, "ip", &["-n", &self.node_ns, "-6", "route", "get", &t.to_string()], None)
                .unwrap_or_default();
            let words: Vec<&str> = route.split_whitespace().collect();
            let after = |k: &str| words.iter().position(|w| *w == k).and_then(|i| words.get(i + 1)).copied();
            let (Some(dev), hop) = (after("dev"), after("via").and_then(|v| v.parse::<IpAddr>().ok()).unwrap_or(t))
            else {
                continue;
            };
            if dev == "lo" || !self.neighbours.insert((dev.to_string(), hop)) {
                continue;
            }
            let mac = mac_text(wire_mac(hop));
            ip(&[
                "-n",
                &self.node_ns,
                "-6",
                "neigh",
                "replace",
                &hop.to_string(),
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    fn counters(&self, family: IpFamily) -> Result<Counters, StepError> {
        let cmd = if family == IpFamily::V4 { "iptables-legacy-save" } else { "ip6tables-legacy-save" };
        Ok(Counters::parse(&run_in(Some(&self.node_ns), cmd, &["-c"], None)?))
    }

    fn conntrack(&self, family: IpFamily) -> Result<Vec<CtEntry>, StepError> {
        let f = if family == IpFamily::V4 { "ipv4" } else { "ipv6" };
        let text = run_in(Some(&self.node_ns), "conntrack", &["-L", "-f", f], None)?;
        Ok(text.lines().filter_map(CtEntry::parse).collect())
    }

    /// `conntrack <op>` on exactly one entry (by its original tuple); "0 flow entries" is not an error.
    fn conntrack_on(&self, op: &str, e: &CtEntry, extra: &[&str]) -> Result<(), StepError> {
        let mut args: Vec<String> =
            vec![op.into(), "-f".into(), if e.orig.src.is_ipv4() { "ipv4" } else { "ipv6" }.into()];
        args.extend(e.filter_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match run_in(Some(&self.node_ns), "conntrack", &refs, None) {
            Ok(_) => Ok(()),
            Err(e) if e.said("0 flow entries") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn flush_address(&self, a: IpAddr) -> Result<(), StepError> {
        let f = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        for dir in ["--orig-src", "--reply-src"] {
            match run_in(Some(&self.node_ns), "conntrack", &["-D", "-f", f, dir, &a.to_string()], None) {
                Ok(_) => {}
                Err(e) if e.said("0 flow entries") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Dataplane for KernelLevel {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), StepError> {
        let previous = std::mem::replace(&mut self.resources, resources.clone());
        self.program().inspect_err(|_| self.resources = previous)
    }

    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, StepError> {
        let port = super::port_of(&self.node, at)?;
        let family = pkt.family();
        if family == IpFamily::V6 {
            self.ensure_neighbours(pkt)?;
        }
        // An ICMP error quotes the packet its sender received. Where the kernel masqueraded that packet to a
        // source port of its own choosing (kube-proxy's MASQUERADE --random-fully), the sender quotes that
        // port: the scenario, written for calxdp (which keeps the port), cannot know it.
        let inner = match inner {
            Some(q) => {
                let entries = self.conntrack(family)?;
                let received = |e: &CtEntry| e.reply.reversed();
                if entries.iter().any(|e| received(e) == q || e.orig == q) {
                    Some(q)
                } else {
                    let masqueraded = |e: &&CtEntry| e.reply.dst != e.orig.src;
                    let chosen = entries.iter().filter(masqueraded).map(received).find(|r| {
                        r.src == q.src && r.dst == q.dst && r.protocol == q.protocol && r.dst_port == q.dst_port
                    });
                    Some(chosen.map(|r| Tuple { src_port: r.src_port, ..q }).unwrap_or(q))
                }
            }
            None => None,
        };
        let mut frame = step_frame(pkt, inner);
        if pkt.protocol == Protocol::SCTP && inner.is_none() {
            let t = Tuple::of(pkt);
            if !self.conntrack(family)?.iter().any(|e| e.orig == t || e.reply == t) {
                frame = sctp_init(pkt);
            }
        }
        if pkt.protocol == Protocol::TCP && inner.is_none() {
            let entries = self.conntrack(family)?;
            let (conn, dir) = self.tcp.connection(&Tuple::of(pkt), &entries);
            let (seq, ack) = self.tcp.next(&conn, dir, pkt.tcp_flags);
            set_tcp_numbers(&mut frame, pkt, seq, ack);
        }
        let mut buf = [0u8; 4096];
        self.read_wires(&mut buf, |_, _| {});
        let before = self.counters(family)?;
        match port {
            Port::Host => {
                let raw = if family == IpFamily::V4 { &self.raw4 } else { &self.raw6 };
                match raw.send(&frame[14..], pkt.dst) {
                    Ok(()) => {}
                    // Netfilter dropped it on the way out (NF_DROP in OUTPUT reaches the sender as EPERM).
                    Err(e) if e.raw_os_error() == Some(libc_eperm()) => {}
                    Err(e) => return Err(format!("sending from the node's stack: {e}").into()),
                }
            }
            _ => {
                let w = self.wire_of(port).ok_or_else(|| format!("port {port:?} has no wire"))?;
                frame[0..6].copy_from_slice(&w.mac);
                w.sock.send(&frame).map_err(|e| format!("sending on the wire of {}: {e}", w.name))?;
            }
        }
        // The first frame of this packet to come out of the node, on any interface.
        let start = Instant::now();
        let mut seen: Option<(String, Vec<u8>)> = None;
        // A port unreachable about the packet is the kernel's REJECT answering it, not the packet.
        let mut rejected = false;
        while seen.is_none() && start.elapsed() < QUIET {
            self.read_wires(&mut buf, |w, f| {
                if crate::wire_hosts::answers(f, pkt) {
                    rejected = true;
                } else if seen.is_none() && is_this_packet(f, pkt) {
                    seen = Some((w.name.clone(), f.to_vec()));
                }
            });
            std::thread::sleep(Duration::from_micros(200));
        }
        let after = self.counters(family)?;
        let moved = after.moved_since(&before);
        let delivered = moved.iter().any(|r| r.text.contains(HARNESS) && r.text.contains("delivered"));
        rejected |= moved.iter().any(|r| r.text.contains(HARNESS) && r.text.contains("answered"));
        let logged = moved.iter().any(|r| r.text.contains("-j LOG"));
        let entries = self.conntrack(family)?;
        let t = Tuple::of(pkt);
        let tracked = entries.iter().any(|e| e.orig == t || e.reply == t);
        let (verdict, out, translated) = match (&seen, delivered) {
            (Some((name, bytes)), _) => {
                let p = parse(bytes).map_err(|m| format!("the frame that left does not parse: {}", m.as_str()))?;
                let port = self.port_of_wire(name).ok_or_else(|| format!("no port for interface {name}"))?;
                (
                    Verdict::Allow,
                    Some(super::egress_of(&self.node, port)),
                    Some(SocketAddr::new(p.header.dst, p.header.dst_port)),
                )
            }
            (None, true) => {
                let dst = entries
                    .iter()
                    .find(|e| e.orig == t)
                    .map(|e| SocketAddr::new(e.reply.src, e.reply.src_port))
                    .unwrap_or(SocketAddr::new(pkt.dst, t.dst_port));
                (Verdict::Allow, Some(calxdp_policy::verdict::Egress::Host), Some(dst))
            }
            (None, false) => (Verdict::Drop, None, None),
        };
        let logs = if logged {
            // The kernel says a LOG rule counted the packet, not which Calico rule it was.
            vec![calxdp_policy::verdict::LogEvent {
                rule: calxdp_policy::verdict::RuleRef {
                    stage: calxdp_policy::resolve::Stage::Normal,
                    direction: calxdp_policy::resolve::Direction::Ingress,
                    endpoint: "kernel".into(),
                    owner: calxdp_policy::verdict::RuleOwner::Profile("a LOG rule".into()),
                    index: 0,
                    action: calxdp_policy::resource::Action::Log,
                },
                prefix: String::new(),
                matched: true,
            }]
        } else {
            Vec::new()
        };
        let reason = Reason::Kernel(explain(&moved, verdict, &seen, delivered));
        Ok(Outcome { verdict, out, translated, tracked, logs, reason, trace: Vec::new(), rejected })
    }

    fn advance(&mut self, by: Duration) {
        // The first seconds pass for real: conntrack also reads the clock itself (a UDP flow becomes a
        // stream only with a packet more than two seconds after its entry was made), and a scenario's short
        // advance is that kind of wait. The rest passes for conntrack only: every entry's remaining timeout
        // shrinks by it; those that run out are deleted, as the kernel's expiry would.
        let real = by.min(Duration::from_millis(2_500));
        std::thread::sleep(real);
        let by = by - real;
        if by.as_secs() == 0 {
            return;
        }
        for family in [IpFamily::V4, IpFamily::V6] {
            let Ok(entries) = self.conntrack(family) else { continue };
            for e in entries {
                let left = e.timeout.saturating_sub(by.as_secs());
                let _ = if left == 0 {
                    self.conntrack_on("-D", &e, &[])
                } else {
                    self.conntrack_on("-U", &e, &["--timeout", &left.to_string()])
                };
            }
        }
    }

    fn set_node(&mut self, node: &NodeConfig) -> Result<(), StepError> {
        let mut next = node.clone();
        kernel_names(&mut next, &mut self.names);
        // Interfaces that go (or whose pod changed addresses or interface) are removed; new ones made.
        let same = |a: &calxdp_policy::node::Workload, b: &calxdp_policy::node::Workload| {
            a.interface == b.interface && a.ips == b.ips && a.mac == b.mac
        };
        let old = self.node.clone();
        for o in &old.workloads {
            let Some(iface) = &o.interface else { continue };
            let stays = next.workloads.iter().any(|n| n.name == o.name && n.namespace == o.namespace && same(o, n));
            if !stays {
                ip(&["-n", &self.node_ns, "link", "del", iface])?;
                self.wires.retain(|w| &w.name != iface);
                self.neighbours.retain(|(d, _)| d != iface);
            }
        }
        for n in &next.workloads {
            let existed = old.workloads.iter().any(|o| o.name == n.name && o.namespace == n.namespace && same(o, n));
            if !existed {
                self.add_workload(n)?;
            }
        }
        self.node = next;
        self.program()?;
        for a in removed_workload_addresses(&old, &self.node) {
            self.flush_address(a)?;
        }
        Ok(())
    }
}

/// Whether a frame that left the node is the step's packet: the node sends nothing else (the harness
/// drops what its own stack would send, and neighbour discovery is answered before this), but NAT may
/// have rewritten every address and port, so only the family and protocol are compared.
fn is_this_packet(frame: &[u8], pkt: &PacketHeader) -> bool {
    let Ok(p) = parse(frame) else { return false };
    p.is_ip() && p.header.protocol == pkt.protocol && p.header.family() == pkt.family()
}

/// The TCP sequence numbers of the hosts a scenario plays. Steps give flags only, but Linux tracks TCP
/// windows: a SYN-ACK must acknowledge the SYN, later segments must be in window. Each connection (by its
/// original tuple) keeps each side's initial and next sequence number, as a real client and server would.
#[derive(Debug, Default)]
struct TcpSequences {
    /// [original direction, reply direction]: (initial sequence number, next sequence number).
    conns: BTreeMap<TupleKey, [Option<(u32, u32)>; 2]>,
}

type TupleKey = (IpAddr, IpAddr, u8, u16, u16);

fn key(t: &Tuple) -> TupleKey {
    (t.src, t.dst, t.protocol.0, t.src_port, t.dst_port)
}

impl TcpSequences {
    /// The (seq, ack) for a TCP packet with `flags` of the connection `orig` in direction `dir` (0: as
    /// it was opened), and the state after it.
    fn next(&mut self, orig: &Tuple, dir: usize, flags: u8) -> (u32, u32) {
        use calxdp_policy::packet::tcp_flags::{ACK, FIN, SYN};
        let conn = self.conns.entry(key(orig)).or_default();
        let base = if dir == 0 { 1_000 } else { 50_000 };
        let seq = match conn[dir] {
            // A plain SYN again after the peer answered: a new incarnation of the connection.
            Some((isn, _)) if flags & SYN != 0 && flags & ACK == 0 && conn[1 - dir].is_some() => {
                let isn = isn.wrapping_add(100_000);
                conn[1 - dir] = None;
                conn[dir] = Some((isn, isn));
                isn
            }
            // Any other SYN or SYN-ACK again: a retransmission, with the same initial sequence number.
            Some((isn, _)) if flags & SYN != 0 => isn,
            Some((_, next)) => next,
            None => {
                conn[dir] = Some((base, base));
                base
            }
        };
        let ack = if flags & ACK != 0 { conn[1 - dir].map(|(_, n)| n).unwrap_or(0) } else { 0 };
        let used = (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32;
        if let Some((isn, next)) = conn[dir] {
            conn[dir] = Some((isn, next.max(seq.wrapping_add(used))));
        }
        (seq, ack)
    }

    /// The connection a packet belongs to and its direction: a connection it opened or answers, else the
    /// conntrack entry it matches (NAT makes replies look like another tuple), else a new one.
    fn connection(&self, t: &Tuple, entries: &[CtEntry]) -> (Tuple, usize) {
        if self.conns.contains_key(&key(t)) {
            return (*t, 0);
        }
        if self.conns.contains_key(&key(&t.reversed())) {
            return (t.reversed(), 1);
        }
        for e in entries {
            if e.orig == *t {
                return (e.orig, 0);
            }
            if e.reply == *t {
                return (e.orig, 1);
            }
        }
        (*t, 0)
    }
}

/// The first packet of an SCTP association as a host sends it: an INIT chunk with verification tag 0
/// (Linux conntrack calls anything else that opens an association INVALID).
fn sctp_init(pkt: &PacketHeader) -> Vec<u8> {
    let mut frame =
        calxdp_dataplane::wire::FrameSpec { payload_len: 20, ..calxdp_dataplane::wire::FrameSpec::new(*pkt) }.build();
    let l4 = match pkt.family() {
        IpFamily::V4 => 14 + ((frame[14] & 0x0f) as usize) * 4,
        IpFamily::V6 => 54,
    };
    if frame.len() < l4 + 32 {
        return frame;
    }
    frame[l4 + 4..l4 + 8].fill(0);
    let chunk: [u8; 20] = [1, 0, 0, 20, 0x11, 0x22, 0x33, 0x44, 0, 0, 0xff, 0xff, 0, 1, 0, 1, 0, 0, 0, 1];
    frame[l4 + 12..l4 + 32].copy_from_slice(&chunk);
    calxdp_dataplane::wire::checksum::fill_l4_checksum(pkt.src, pkt.dst, Protocol::SCTP, &mut frame[l4..]);
    frame
}

/// Writes `seq` and `ack` into a built frame's TCP header and fixes its checksum.
fn set_tcp_numbers(frame: &mut [u8], pkt: &PacketHeader, seq: u32, ack: u32) {
    let l4 = match pkt.family() {
        IpFamily::V4 => 14 + ((frame[14] & 0x0f) as usize) * 4,
        IpFamily::V6 => 54,
    };
    if frame.len() < l4 + 20 {
        return;
    }
    frame[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    frame[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
    calxdp_dataplane::wire::checksum::fill_l4_checksum(pkt.src, pkt.dst, Protocol::TCP, &mut frame[l4..]);
}

/// One rule's counter in `iptables-save -c` output.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counted {
    table: String,
    chain: String,
    packets: u64,
    text: String,
}

#[derive(Clone, Debug, Default)]
struct Counters {
    rules: Vec<Counted>,
}

impl Counters {
    fn parse(text: &str) -> Counters {
        let mut table = String::new();
        let mut rules = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix('[') else { continue };
            let Some((count, rule)) = rest.split_once("] ") else { continue };
            let packets = count.split(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let chain = rule.strip_prefix("-A ").and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
            rules.push(Counted { table: table.clone(), chain, packets, text: rule.to_string() });
        }
        Counters { rules }
    }

    /// The rules whose packet counters rose since `before` (same ruleset: rules pair up in order).
    fn moved_since(&self, before: &Counters) -> Vec<Counted> {
        let old: BTreeMap<(&str, &str, usize), u64> = before.indexed().map(|(k, r)| (k, r.packets)).collect();
        self.indexed().filter(|(k, r)| r.packets > old.get(k).copied().unwrap_or(0)).map(|(_, r)| r.clone()).collect()
    }

    fn indexed(&self) -> impl Iterator<Item = ((&str, &str, usize), &Counted)> {
        let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        self.rules.iter().map(move |r| {
            let n = seen.entry((r.table.as_str(), r.chain.as_str())).or_insert(0);
            *n += 1;
            ((r.table.as_str(), r.chain.as_str(), *n), r)
        })
    }
}

/// A rule without its `cali:` hash comment, for reading.
fn readable(text: &str) -> String {
    let mut s = text.to_string();
    if let Some(i) = s.find("-m comment --comment \"cali:") {
        if let Some(end) = s[i..].find("\" ") {
            s.replace_range(i..i + end + 2, "");
        }
    }
    s
}

/// What the counters say decided the packet.
fn explain(moved: &[Counted], verdict: Verdict, seen: &Option<(String, Vec<u8>)>, delivered: bool) -> String {
    let relevant = |r: &&Counted| !r.text.contains(HARNESS);
    let drops: Vec<&Counted> =
        moved.iter().filter(relevant).filter(|r| r.text.ends_with("-j DROP") || r.text.contains("-j REJECT")).collect();
    match verdict {
        Verdict::Drop => match drops.first() {
            Some(r) => format!("dropped by {} {}", r.table, readable(&r.text)),
            None => "no rule dropped it: not routed, or dropped by conntrack or the stack before any rule".into(),
        },
        Verdict::Allow => {
            let accepts: Vec<String> = moved
                .iter()
                .filter(relevant)
                .filter(|r| r.text.ends_with("-j ACCEPT"))
                .map(|r| format!("{} {}", r.table, readable(&r.text)))
                .collect();
            let place = match (seen, delivered) {
                (Some((name, _)), _) => format!("left by {name}"),
                _ => "delivered to the host".into(),
            };
            if accepts.is_empty() {
                format!("{place}; no rule accepted it explicitly")
            } else {
                format!("{place}; accepted by {}", accepts.join("; "))
            }
        }
    }
}

/// One line of `conntrack -L`: protocol, seconds left, original and reply tuples.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CtEntry {
    proto: u8,
    timeout: u64,
    orig: Tuple,
    reply: Tuple,
    /// ICMP type, code and id of the original direction.
    icmp: Option<(u8, u8, u16)>,
}

impl CtEntry {
    fn parse(line: &str) -> Option<CtEntry> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let proto: u8 = words.get(1)?.parse().ok()?;
        let timeout: u64 = words.get(2)?.parse().ok()?;
        let mut sides: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new()];
        for w in &words[3..] {
            let Some((k, v)) = w.split_once('=') else { continue };
            if k == "src" && sides.last().is_some_and(|s| s.contains_key("src")) {
                sides.push(BTreeMap::new());
            }
            if let Some(s) = sides.last_mut() {
                s.entry(k).or_insert(v);
            }
        }
        if sides.len() < 2 {
            return None;
        }
        let protocol = Protocol(proto);
        let tuple = |s: &BTreeMap<&str, &str>| -> Option<Tuple> {
            let src: IpAddr = s.get("src")?.parse().ok()?;
            let dst: IpAddr = s.get("dst")?.parse().ok()?;
            let num = |k: &str| s.get(k).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
            if s.contains_key("id") {
                // ICMP echo, keyed on its type as calxdp does (Tuple::echo); errors are never tracked.
                let request = matches!(s.get("type").copied(), Some("8" | "128"));
                return Some(Tuple::echo(src, dst, protocol, request, num("id")));
            }
            let (sp, dp) = if s.contains_key("sport") { (num("sport"), num("dport")) } else { (0, 0) };
            Some(Tuple { src, dst, protocol, src_port: sp, dst_port: dp })
        };
        let orig = tuple(&sides[0])?;
        let reply = tuple(&sides[1])?;
        let icmp = sides[0].get("type").map(|t| {
            let n = |k: &str| sides[0].get(k).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
            (t.parse().unwrap_or(0), n("code") as u8, n("id"))
        });
        Some(CtEntry { proto, timeout, orig, reply, icmp })
    }

    /// `conntrack` filter options naming this entry by its original tuple.
    fn filter_args(&self) -> Vec<String> {
        let mut a = vec![
            "-p".to_string(),
            self.proto.to_string(),
            "--orig-src".into(),
            self.orig.src.to_string(),
            "--orig-dst".into(),
            self.orig.dst.to_string(),
        ];
        match (self.proto, self.icmp) {
            (6 | 17 | 132 | 136, _) => {
                a.extend([
                    "--sport".into(),
                    self.orig.src_port.to_string(),
                    "--dport".into(),
                    self.orig.dst_port.to_string(),
                ]);
            }
            (1, Some((t, c, id))) => {
                a.extend([
                    "--icmp-type".into(),
                    t.to_string(),
                    "--icmp-code".into(),
                    c.to_string(),
                    "--icmp-id".into(),
                    id.to_string(),
                ]);
            }
            (58, Some((t, c, id))) => {
                a.extend([
                    "--icmpv6-type".into(),
                    t.to_string(),
                    "--icmpv6-code".into(),
                    c.to_string(),
                    "--icmpv6-id".into(),
                    id.to_string(),
                ]);
            }
            _ => {}
        }
        a
    }
}

/// EPERM: what a raw socket's send reports when netfilter drops the packet.
fn libc_eperm() -> i32 {
    1
}

/// Builds the level for a scenario.
pub fn build(node: &NodeConfig, resources: &ResourceSet) -> Result<Box<dyn Dataplane>, StepError> {
    Ok(Box::new(KernelLevel::new(node, resources)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_parse() {
        let e = CtEntry::parse("tcp      6 119 SYN_SENT src=10.0.0.99 dst=10.0.0.10 sport=40000 dport=3000 [UNREPLIED] src=192.168.1.10 dst=10.0.0.99 sport=3000 dport=40000 mark=0 use=1").unwrap();
        assert_eq!((e.proto, e.timeout), (6, 119));
        assert_eq!(e.orig.dst_port, 3000);
        assert_eq!(e.reply.src, "192.168.1.10".parse::<IpAddr>().unwrap());
        let i = CtEntry::parse("icmp     1 29 src=10.0.0.2 dst=10.0.0.1 type=8 code=0 id=7 src=10.0.0.1 dst=10.0.0.2 type=0 code=0 id=7 mark=0 use=1").unwrap();
        // An echo's tuple holds its direction (Tuple::echo): (id, id+1) for the request, (id+1, id) back.
        assert_eq!((i.orig.src_port, i.orig.dst_port), (7, 8));
        assert_eq!((i.reply.src_port, i.reply.dst_port), (8, 7));
        assert_eq!(i.icmp, Some((8, 0, 7)));
        assert!(i.filter_args().contains(&"--icmp-id".to_string()));
        let g = CtEntry::parse(
            "unknown  47 599 src=10.1.0.5 dst=8.8.8.8 [UNREPLIED] src=8.8.8.8 dst=10.1.0.5 mark=0 use=1",
        )
        .unwrap();
        assert_eq!(g.proto, 47);
        assert_eq!(g.filter_args().len(), 6);
    }

    #[test]
    fn counters_pair_up_and_say_what_moved() {
        let before = Counters::parse("*filter\n[1:60] -A cali-tw-caliA -m conntrack --ctstate INVALID -j DROP\n[0:0] -A cali-tw-caliA -m comment --comment \"cali:abc\" -m comment --comment \"Drop if no profiles matched\" -j DROP\nCOMMIT\n");
        let after = Counters::parse("*filter\n[1:60] -A cali-tw-caliA -m conntrack --ctstate INVALID -j DROP\n[1:60] -A cali-tw-caliA -m comment --comment \"cali:abc\" -m comment --comment \"Drop if no profiles matched\" -j DROP\nCOMMIT\n");
        let moved = after.moved_since(&before);
        assert_eq!(moved.len(), 1);
        let why = explain(&moved, Verdict::Drop, &None, false);
        assert!(why.contains("Drop if no profiles matched") && !why.contains("cali:abc"), "{why}");
    }

    #[test]
    fn pods_get_names_felix_recognises() {
        let mut node = NodeConfig {
            name: "n".into(),
            uplinks: Vec::new(),
            namespaces: Vec::new(),
            workloads: Vec::new(),
            remote_endpoints: Vec::new(),
            services: Vec::new(),
            felix: Default::default(),
        };
        for i in ["caliA", "tap0", "cali-a-very-long-name"] {
            node.workloads.push(calxdp_policy::node::Workload {
                name: i.into(),
                namespace: "default".into(),
                interface: Some(i.into()),
                ips: Vec::new(),
                labels: Default::default(),
                service_account: "default".into(),
                ports: Vec::new(),
                mac: None,
                profiles: None,
            });
        }
        kernel_names(&mut node, &mut KernelNames::new());
        let names: Vec<_> = node.workloads.iter().map(|w| w.interface.clone().unwrap()).collect();
        assert_eq!(names, ["caliA", "calik0", "calik1"]);
    }
}
