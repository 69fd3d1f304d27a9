//! The live parity level: each scenario on a real node. Two network namespaces per scenario: the node,
//! where calxdp takes over a veth per uplink and pod (XDP + AF_XDP) and makes its host tap, and the wire,
//! where the other end of every veth is. Each step is a real frame written to the wire end of its port
//! (or, for the host, into the tap as the host stack would); the verdict and the output port are what is
//! seen on the wire, the translation is read from the frame that arrived, and the reason, logs and
//! conntrack state come from the dataplane's trace of that frame. `advance` moves the dataplane's clock.
//! The tap carries no addresses here: the test plays the host stack.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use calxdp_dataplane::arp;
use calxdp_dataplane::frames::ipv4_header_ok;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{explain, rule_ref};
use calxdp_dataplane::wire::parse;
use calxdp_dataplane::worker::TraceRecord;
use calxdp_dataplane::xsk::netns;
use calxdp_dataplane::xsk::packet::PacketSocket;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::flows::Tuple;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::reference::Attach;
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::verdict::{Egress, Outcome, Verdict};

use super::pipeline_level::step_frame;
use super::Dataplane;
use crate::live::{interfaces, ip, LiveNode, LiveOptions, Namespaces};

const TAP: &str = "calxdp-host";
/// The kernel's interface name limit, with its terminating NUL.
const IFNAMSIZ: usize = 16;
/// How long a frame may take to be decided, and to arrive once allowed.
const DECIDE_WITHIN: Duration = Duration::from_secs(2);
const ARRIVE_WITHIN: Duration = Duration::from_secs(1);
/// How long to watch the wire after a drop for a frame that should not be there.
const QUIET_AFTER_DROP: Duration = Duration::from_millis(3);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A scenario's node, running.
#[derive(Debug)]
pub struct LiveLevel {
    live: Option<LiveNode>,
    trace: Receiver<TraceRecord>,
    /// The wire end of each port, by port, and the tap (as the host stack sees it).
    sockets: Vec<(Port, PacketSocket)>,
    node: NodeConfig,
    _ns: Namespaces,
}

impl Drop for LiveLevel {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.stop();
        }
    }
}

/// Whether this process can build topologies (root, `ip`, namespaces); the reason if not.
pub fn unavailable() -> Option<String> {
    if !crate::live::is_root() {
        return Some("the live level needs root (network namespaces, XDP, AF_XDP)".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("the live level needs iproute2's `ip`".into());
    }
    None
}

impl LiveLevel {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> Result<LiveLevel, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        // A pod's interface name is only a name here (no selector sees it); one the kernel cannot have
        // (over 15 bytes) gets a short stand-in. Uplink names stay: host endpoints bind to them.
        let mut node = node.clone();
        for (i, w) in node.workloads.iter_mut().enumerate() {
            if w.interface.as_ref().is_some_and(|n| n.len() >= IFNAMSIZ) {
                w.interface = Some(format!("cxwl{i}"));
            }
        }
        let node = &node;
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (node_ns, wire_ns) = (format!("cxp{pid}n{k}"), format!("cxp{pid}w{k}"));
        let mut ns = Namespaces::default();
        ns.add(&node_ns)?;
        ns.add(&wire_ns)?;
        let mut wires = Vec::new();
        for (i, (port, name)) in interfaces(node).iter().enumerate() {
            let peer = format!("w{i}");
            ip(&["link", "add", name, "netns", &node_ns, "type", "veth", "peer", "name", &peer, "netns", &wire_ns])?;
            ip(&["-n", &node_ns, "link", "set", name, "up"])?;
            ip(&["-n", &wire_ns, "link", "set", &peer, "up"])?;
            wires.push((*port, peer));
        }
        let (tx, trace) = sync_channel(1024);
        let opts = LiveOptions {
            host_addresses: false,
            tap: TAP.into(),
            xsk: calxdp_dataplane::xsk::socket::XskConfig { frames: 512, frame_size: 2048, ring_size: 256 },
            log_rules: false,
            ..LiveOptions::default()
        };
        let (n, r) = (node.clone(), resources.clone());
        let live = netns::run_in(&node_ns, move || LiveNode::start(n, r, &opts, Some(tx)))
            .map_err(|e| format!("entering namespace {}: {e}", node_ns))??;
        let mut sockets = netns::run_in(&wire_ns, move || {
            wires
                .into_iter()
                .map(|(port, peer)| PacketSocket::open(&peer).map(|s| (port, s)))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("packet socket on the wire: {e}"))?;
        let tap = netns::run_in(&node_ns, || PacketSocket::open(TAP))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("packet socket on the tap: {e}"))?;
        sockets.push((Port::Host, tap));
        Ok(LiveLevel { live: Some(live), trace, sockets, node: node.clone(), _ns: ns })
    }

    fn live(&mut self) -> &mut LiveNode {
        self.live.as_mut().expect("running until dropped")
    }

    fn port(&self, at: &Attach) -> Result<Port, String> {
        super::port_of(&self.node, at)
    }

    fn egress(&self, p: Port) -> Egress {
        super::egress_of(&self.node, p)
    }

    /// Empties every socket and the trace, so a step sees only its own frame.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        for (_, s) in &self.sockets {
            while let Some(n) = s.recv(&mut buf) {
                answer_arp(s, &buf[..n]);
            }
        }
        while self.trace.try_recv().is_ok() {}
    }

    /// The first IP frame that arrives within `within` on the port the dataplane says it sent the frame
    /// out of (`expected`), or, for a dropped frame, on any port but the one it came in by (what the
    /// dataplane sends back to a sender, an ICMP error or a neighbour advertisement, is not the frame).
    /// A frame that turns up on another port instead is returned too, so the caller can say where.
    fn arrival(&self, within: Duration, expected: Option<Port>, ingress: Port) -> Option<(Port, Vec<u8>)> {
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        let mut elsewhere = None;
        loop {
            for (port, s) in &self.sockets {
                while let Some(n) = s.recv(&mut buf) {
                    answer_arp(s, &buf[..n]);
                    if !parse(&buf[..n]).is_ok_and(|p| p.is_ip()) {
                        continue;
                    }
                    match expected {
                        Some(e) if e == *port => return Some((*port, buf[..n].to_vec())),
                        None if *port != ingress => return Some((*port, buf[..n].to_vec())),
                        Some(_) if *port != ingress && elsewhere.is_none() => {
                            elsewhere = Some((*port, buf[..n].to_vec()))
                        }
                        _ => {}
                    }
                }
            }
            if start.elapsed() >= within {
                return elsewhere;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Dataplane for LiveLevel {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), String> {
        self.live().publisher.replace(resources.clone()).map(|_| ()).map_err(|e| e.to_string())
    }

    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, String> {
        let port = self.port(at)?;
        let frame = step_frame(pkt, inner);
        self.drain();
        let sock =
            &self.sockets.iter().find(|(p, _)| *p == port).ok_or_else(|| format!("port {port:?} has no wire"))?.1;
        sock.send(&frame).map_err(|e| format!("sending on {}: {e}", sock.interface))?;
        let rec = self
            .trace
            .recv_timeout(DECIDE_WITHIN)
            .map_err(|_| format!("the dataplane did not decide the frame within {DECIDE_WITHIN:?}"))?;
        if rec.header != *pkt {
            return Err(format!("the dataplane decided another packet: {:?}", rec.header));
        }
        let (within, expected) =
            if rec.verdict == Verdict::Allow { (ARRIVE_WITHIN, rec.out) } else { (QUIET_AFTER_DROP, None) };
        let seen = self.arrival(within, expected, port);
        let (verdict, out, translated) = match (&seen, rec.verdict) {
            (Some((p, bytes)), Verdict::Allow) => {
                if Some(*p) != rec.out {
                    return Err(format!("the trace says out {:?} but the frame arrived on {p:?}", rec.out));
                }
                let parsed =
                    parse(bytes).map_err(|m| format!("the frame that arrived does not parse: {}", m.as_str()))?;
                if !ipv4_header_ok(bytes, &parsed) || !parsed.verify_l4_checksum(bytes) {
                    return Err("the frame that arrived has a bad checksum".into());
                }
                (
                    Verdict::Allow,
                    Some(self.egress(*p)),
                    Some(SocketAddr::new(parsed.header.dst, parsed.header.dst_port)),
                )
            }
            (None, Verdict::Allow) => {
                return Err(format!("the dataplane allowed the frame out of {:?} but nothing arrived", rec.out))
            }
            (Some((p, _)), Verdict::Drop) if *p != port => {
                return Err(format!("the dataplane dropped the frame but a frame arrived on {p:?}"))
            }
            _ => (Verdict::Drop, None, None),
        };
        let tables = self.live().publisher.slot().hold();
        let logs = rec
            .logs
            .iter()
            .flatten()
            .map(|h| log_for(&tables.world, rule_ref(&tables, h.ep, h.stage, h.dir, h.rule)))
            .collect();
        Ok(Outcome {
            verdict,
            out,
            translated,
            tracked: rec.tracked,
            logs,
            reason: explain(&tables, &rec.decision),
            trace: Vec::new(),
        })
    }

    fn advance(&mut self, by: Duration) {
        self.live().clock.advance(by);
    }

    fn set_node(&mut self, _node: &NodeConfig) -> Result<(), String> {
        Err("the live level does not change workloads yet".into())
    }
}

/// Plays the hosts on the wire: the dataplane asks for the MAC of a next hop it has not heard from (an
/// on-link neighbour, a pod whose MAC the node file does not give), and every address answers with a MAC
/// made from itself.
pub fn answer_arp(sock: &PacketSocket, frame: &[u8]) {
    let Some(req) = arp::parse(frame).filter(|a| a.request) else { return };
    let o = req.target_ip.octets();
    let mut out = [0u8; 64];
    let n = arp::reply(&req, [0x02, 0xcc, o[0], o[1], o[2], o[3]], &mut out);
    let _ = sock.send(&out[..n]);
}

/// Builds the level for a scenario.
pub fn build(node: &NodeConfig, resources: &ResourceSet) -> Result<Box<dyn Dataplane>, String> {
    Ok(Box::new(LiveLevel::new(node, resources)?))
}
