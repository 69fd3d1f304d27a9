//! The live parity level: each scenario on a real node. Two network namespaces per scenario: the node,
//! where calxdp takes over a veth per uplink and pod (XDP + AF_XDP) and makes its host tap, and the wire,
//! where the other end of every veth is. Each step is a real frame written to the wire end of its port
//! (or, for the host, into the tap as the host stack would); the verdict and the output port are what is
//! seen on the wire, the translation is read from the frame that arrived, and the reason, logs and
//! conntrack state come from the dataplane's trace of that frame. `advance` moves the dataplane's clock.
//! The tap carries no addresses here: the test plays the host stack, and the wire's hosts answer ARP and
//! neighbour solicitations. Workloads added by a step get a new veth, attached by the running node; deleted
//! ones lose theirs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use calxdp_dataplane::frames::ipv4_header_ok;
use calxdp_dataplane::pipeline::{explain, rule_ref};
use calxdp_dataplane::ports::PortId;
use calxdp_dataplane::sys::netns;
use calxdp_dataplane::sys::packet::PacketSocket;
use calxdp_dataplane::wire::parse;
use calxdp_dataplane::worker::TraceRecord;
use calxdp_policy::ids::Tuple;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::reference::Attach;
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::verdict::{Egress, Outcome, Verdict};

use super::pipeline_level::step_frame;
use super::{Dataplane, StepError};
use crate::live::{ip, LiveNode, LiveOptions, Namespaces};
use crate::wire_hosts;

const TAP: &str = "calxdp-host";
/// The kernel's interface name limit, with its terminating NUL.
const IFNAMSIZ: usize = 16;
/// How long a frame may take to be decided, and to arrive once allowed.
const DECIDE_WITHIN: Duration = Duration::from_secs(2);
const ARRIVE_WITHIN: Duration = Duration::from_secs(1);
/// How long to watch the wire after a drop for a frame that should not be there.
const QUIET_AFTER_DROP: Duration = Duration::from_millis(3);
/// How long a new pod's veth may take to be taken over.
const ATTACH_WITHIN: Duration = Duration::from_secs(5);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A scenario's node, running.
#[derive(Debug)]
pub struct LiveLevel {
    live: Option<LiveNode>,
    trace: Receiver<TraceRecord>,
    /// The wire end of each port, by port id (the tap's as the host stack sees it).
    sockets: BTreeMap<PortId, PacketSocket>,
    node_ns: String,
    wire_ns: String,
    /// Veths made so far (a wire end's name per node-side interface), and how many were ever made.
    wires: BTreeMap<String, String>,
    veths: usize,
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

/// A pod's interface name is only a name here (no selector sees it); one the kernel cannot have (over 15
/// bytes) gets a short stand-in made from it. Uplink names stay: host endpoints bind to them.
fn kernel_names(node: &NodeConfig) -> NodeConfig {
    let mut node = node.clone();
    for w in node.workloads.iter_mut() {
        if let Some(name) = w.interface.as_ref().filter(|n| n.len() >= IFNAMSIZ) {
            let h =
                name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            w.interface = Some(format!("cxwl{:08x}", h as u32));
        }
    }
    node
}

impl LiveLevel {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> Result<LiveLevel, StepError> {
        if let Some(why) = unavailable() {
            return Err(why.into());
        }
        let node = kernel_names(node);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (node_ns, wire_ns) = (format!("cxp{pid}n{k}"), format!("cxp{pid}w{k}"));
        let mut ns = Namespaces::default();
        ns.add(&node_ns)?;
        ns.add(&wire_ns)?;
        let mut level = LiveLevel {
            live: None,
            trace: sync_channel(1).1,
            sockets: BTreeMap::new(),
            node_ns: node_ns.clone(),
            wire_ns,
            wires: BTreeMap::new(),
            veths: 0,
            _ns: ns,
        };
        for name in interface_names(&node) {
            level.make_veth(&name)?;
        }
        let (tx, trace) = sync_channel(1024);
        let opts = LiveOptions {
            host_addresses: false,
            tap: TAP.into(),
            xsk: calxdp_dataplane::sys::socket::XskConfig { frames: 512, frame_size: 2048, ring_size: 256 },
            log_rules: false,
            netns: Some(node_ns.clone()),
            ..LiveOptions::default()
        };
        let (n, r) = (node.clone(), resources.clone());
        let live = netns::run_in(&node_ns, move || LiveNode::start(n, r, &opts, Some(tx)))
            .map_err(|e| format!("entering namespace {}: {e}", node_ns))??;
        level.trace = trace;
        level.live = Some(live);
        level.open_sockets()?;
        let tap = netns::run_in(&node_ns, || PacketSocket::open(TAP))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("packet socket on the tap: {e}"))?;
        let host = level.live().publisher.node().uplinks.len() as PortId;
        level.sockets.insert(host, tap);
        Ok(level)
    }

    fn live(&mut self) -> &mut LiveNode {
        self.live.as_mut().expect("running until dropped")
    }

    /// A veth for node-side interface `name`, its other end in the wire namespace.
    fn make_veth(&mut self, name: &str) -> Result<(), StepError> {
        self.veths += 1;
        let peer = format!("w{}", self.veths);
        let (node_ns, wire_ns) = (&self.node_ns, &self.wire_ns);
        ip(&["link", "add", name, "netns", node_ns, "type", "veth", "peer", "name", &peer, "netns", wire_ns])?;
        ip(&["-n", node_ns, "link", "set", name, "up"])?;
        ip(&["-n", wire_ns, "link", "set", &peer, "up"])?;
        self.wires.insert(name.to_string(), peer);
        Ok(())
    }

    /// A packet socket on the wire end of every attached port that has none yet.
    fn open_sockets(&mut self) -> Result<(), StepError> {
        let live = self.live.as_ref().expect("running");
        let node = live.publisher.node().clone();
        let mut wanted = Vec::new();
        for (u, up) in node.uplinks.iter().enumerate() {
            wanted.push((u as PortId, up.name.clone()));
        }
        for w in &node.workloads {
            if let Some(i) = &w.interface {
                if let Some(id) = live.publisher.ports.get(i) {
                    wanted.push((id, i.clone()));
                }
            }
        }
        for (id, iface) in wanted {
            if self.sockets.contains_key(&id) {
                continue;
            }
            let Some(peer) = self.wires.get(&iface).cloned() else { continue };
            let sock = netns::run_in(&self.wire_ns, move || PacketSocket::open(&peer))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("packet socket on the wire: {e}"))?;
            self.sockets.insert(id, sock);
        }
        Ok(())
    }

    /// Empties every socket and the trace, so a step sees only its own frame.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        for s in self.sockets.values() {
            while let Some(n) = s.recv(&mut buf) {
                answer_wire(s, &buf[..n]);
            }
        }
        while self.trace.try_recv().is_ok() {}
    }

    /// The first IP frame that arrives within `within` on the port the dataplane says it sent the frame
    /// out of (`expected`), or, for a dropped frame, on any port but the one it came in by (what the
    /// dataplane sends back to a sender, an ICMP error or a neighbour advertisement, is not the frame).
    /// A frame that turns up on another port instead is returned too, so the caller can say where. Also
    /// whether a port unreachable about `pkt` came back (Reject); with `answer_expected` (the dataplane says
    /// it answered) any port unreachable but the frame sent is the answer, and the wait ends early once it
    /// came, after the quiet time of a drop.
    fn arrival(
        &self,
        within: Duration,
        expected: Option<PortId>,
        ingress: PortId,
        (pkt, sent): (&PacketHeader, &[u8]),
        answer_expected: bool,
    ) -> (Option<(PortId, Vec<u8>)>, bool) {
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        let mut elsewhere = None;
        let mut answered = false;
        loop {
            for (port, s) in &self.sockets {
                while let Some(n) = s.recv(&mut buf) {
                    answer_wire(s, &buf[..n]);
                    let frame = &buf[..n];
                    if wire_hosts::is_resolution(frame) || !parse(frame).is_ok_and(|p| p.is_ip()) {
                        continue;
                    }
                    let unreachable = answer_expected && frame != sent && wire_hosts::is_unreachable(frame);
                    if wire_hosts::answers(frame, pkt) || unreachable {
                        answered = true;
                        continue;
                    }
                    match expected {
                        Some(e) if e == *port => return (Some((*port, frame.to_vec())), answered),
                        None if *port != ingress => return (Some((*port, frame.to_vec())), answered),
                        Some(_) if *port != ingress && elsewhere.is_none() => elsewhere = Some((*port, frame.to_vec())),
                        _ => {}
                    }
                }
            }
            let waited = start.elapsed();
            if waited >= within || (answer_expected && answered && waited >= QUIET_AFTER_DROP) {
                return (elsewhere, answered);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn egress(&mut self, id: PortId) -> Option<Egress> {
        let tables = self.live().publisher.slot().hold();
        tables.ports.port_of_id(id).map(|p| super::egress_of(&tables.world.node, p))
    }
}

/// The uplinks' and pods' interface names of a node.
fn interface_names(node: &NodeConfig) -> Vec<String> {
    node.uplinks
        .iter()
        .map(|u| u.name.clone())
        .chain(node.workloads.iter().filter_map(|w| w.interface.clone()))
        .collect()
}

impl Dataplane for LiveLevel {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), StepError> {
        Ok(self.live().publisher.replace(resources.clone()).map(|_| ())?)
    }

    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, StepError> {
        let id = {
            let tables = self.live().publisher.slot().hold();
            tables.ports.id_of(super::port_of(&tables.world.node, at)?)
        };
        let frame = step_frame(pkt, inner);
        self.drain();
        let sock = self.sockets.get(&id).ok_or_else(|| format!("port {id} has no wire"))?;
        sock.send(&frame).map_err(|e| format!("sending on {}: {e}", sock.interface))?;
        let rec = self
            .trace
            .recv_timeout(DECIDE_WITHIN)
            .map_err(|_| format!("the dataplane did not decide the frame within {DECIDE_WITHIN:?}"))?;
        if rec.header != *pkt {
            return Err(format!("the dataplane decided another packet: {:?}", rec.header).into());
        }
        let (within, expected) = match rec.verdict {
            Verdict::Allow => (ARRIVE_WITHIN, rec.out_port),
            // An answer the dataplane sent may wait for its next hop first.
            Verdict::Drop if rec.rejected => (ARRIVE_WITHIN, None),
            Verdict::Drop => (QUIET_AFTER_DROP, None),
        };
        let (seen, rejected) = self.arrival(within, expected, id, (pkt, &frame), rec.rejected);
        let (verdict, out, translated) = match (&seen, rec.verdict) {
            (Some((p, bytes)), Verdict::Allow) => {
                if Some(*p) != rec.out_port {
                    return Err(
                        format!("the trace says out {:?} but the frame arrived on port {p}", rec.out_port).into()
                    );
                }
                let parsed =
                    parse(bytes).map_err(|m| format!("the frame that arrived does not parse: {}", m.as_str()))?;
                if !ipv4_header_ok(bytes, &parsed) || !parsed.verify_l4_checksum(bytes) {
                    return Err("the frame that arrived has a bad checksum".into());
                }
                let dst = SocketAddr::new(parsed.header.dst, parsed.header.dst_port);
                (Verdict::Allow, self.egress(*p), Some(dst))
            }
            (None, Verdict::Allow) => {
                return Err(format!("the dataplane allowed the frame out of {:?} but nothing arrived", rec.out).into())
            }
            (Some((p, _)), Verdict::Drop) if *p != id => {
                return Err(format!("the dataplane dropped the frame but a frame arrived on port {p}").into())
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
            rejected,
        })
    }

    fn advance(&mut self, by: Duration) {
        self.live().clock.advance(by);
    }

    /// Veths for new pods, then the node changed (the running node attaches them), then the veths of pods
    /// that are gone are deleted.
    fn set_node(&mut self, node: &NodeConfig) -> Result<(), StepError> {
        let node = kernel_names(node);
        let now: Vec<String> = interface_names(&node);
        for name in &now {
            if !self.wires.contains_key(name) {
                self.make_veth(name)?;
            }
        }
        self.live().set_node(node.clone())?;
        let gone: Vec<String> = self.wires.keys().filter(|n| !now.contains(n)).cloned().collect();
        for name in gone {
            ip(&["-n", &self.node_ns.clone(), "link", "del", &name])?;
            self.wires.remove(&name);
        }
        self.live().supervise();
        let deadline = Instant::now() + ATTACH_WITHIN;
        while now.iter().any(|n| !self.live().is_attached(n)) {
            if Instant::now() > deadline {
                let events = self.live().take_events();
                return Err(format!("the node did not take over its new interfaces: {events:?}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
            self.live().supervise();
        }
        // Sockets of ports that are gone, then of the new ones.
        let live = self.live.as_ref().expect("running");
        let host = live.publisher.node().uplinks.len() as PortId;
        let ids: Vec<PortId> = now.iter().filter_map(|n| live.publisher.ports.get(n)).collect();
        self.sockets.retain(|id, _| *id <= host || ids.contains(id));
        self.open_sockets()
    }
}

/// Plays the hosts on the wire: the dataplane asks for the MAC of a next hop it has not heard from (an
/// on-link neighbour, a pod whose MAC the node file does not give), by ARP or neighbour solicitation, and
/// every address answers with a MAC made from itself.
fn answer_wire(sock: &PacketSocket, frame: &[u8]) {
    if let Some(reply) = wire_hosts::answer(frame) {
        let _ = sock.send(&reply);
    }
}

/// Builds the level for a scenario.
pub fn build(node: &NodeConfig, resources: &ResourceSet) -> Result<Box<dyn Dataplane>, StepError> {
    Ok(Box::new(LiveLevel::new(node, resources)?))
}
