//! The pipeline parity level: every step as a real frame through the production worker on in-memory ports
//! (`offline.rs`), with the tables published by the control side exactly as a live node publishes them. The
//! verdict and the output port are where the frame came out, the translation is read from the frame that
//! came out (whose checksums are verified), and the reason, logs and conntrack state come from the worker's
//! trace of that frame.

use std::net::SocketAddr;
use std::time::Duration;

use calxdp_dataplane::frames::ipv4_header_ok;
use calxdp_dataplane::pipeline::{explain, rule_ref};
use calxdp_dataplane::ports::PortId;
use calxdp_dataplane::wire::{build_icmp_error, parse, FrameSpec};
use calxdp_policy::ids::Tuple;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::reference::Attach;
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::verdict::{Egress, Outcome, Verdict};

use super::{Dataplane, StepError};
use crate::offline::OfflineNode;
use crate::wire_hosts;

/// A node on memory ports, with a clock the scenario controls.
#[derive(Debug)]
pub struct PipelineNode {
    node: OfflineNode,
}

impl PipelineNode {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> PipelineNode {
        PipelineNode { node: OfflineNode::new(node.clone(), resources.clone(), false) }
    }

    /// A pipeline node on an offline node built elsewhere (the felix level builds it from the driver's model).
    pub fn from_offline(node: OfflineNode) -> PipelineNode {
        PipelineNode { node }
    }

    /// The offline node under the scenario's steps.
    pub fn offline_mut(&mut self) -> &mut OfflineNode {
        &mut self.node
    }

    fn port(&self, at: &Attach) -> Result<PortId, StepError> {
        let tables = self.node.tables();
        let p = super::port_of(&tables.world.node, at)?;
        Ok(tables.ports.id_of(p))
    }

    fn egress(&self, id: PortId) -> Option<Egress> {
        let tables = self.node.tables();
        tables.ports.port_of_id(id).map(|p| super::egress_of(&tables.world.node, p))
    }
}

impl Dataplane for PipelineNode {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), StepError> {
        Ok(self.node.publisher.replace(resources.clone()).map(|_| ())?)
    }

    /// The step as a real frame: built, received, decided, rewritten, sent, and parsed again where it came
    /// out.
    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, StepError> {
        let id = self.port(at)?;
        let frame = step_frame(pkt, inner);
        for p in self.node.port_ids() {
            self.node.take_sent(p);
        }
        self.node.inject(id, frame)?;
        let records = self.node.settle();
        let rec = records
            .iter()
            .find(|r| r.in_port == id && r.header == *pkt)
            .ok_or_else(|| format!("the dataplane did not decide the frame (traced: {records:?})"))?;
        // What came out, by port: the step's frame is the first IP frame that is not neighbour resolution;
        // for a frame the dataplane says it answered (Reject), a port unreachable is the answer.
        let mut arrived = None;
        let mut rejected = false;
        for p in self.node.port_ids() {
            for f in self.node.take_sent(p) {
                if wire_hosts::is_resolution(&f) || !parse(&f).is_ok_and(|x| x.is_ip()) {
                    continue;
                }
                let answered = rec.verdict == Verdict::Drop && rec.rejected;
                if wire_hosts::answers(&f, pkt) || (answered && wire_hosts::is_unreachable(&f)) {
                    let ok = parse(&f).is_ok_and(|x| ipv4_header_ok(&f, &x) && x.verify_l4_checksum(&f));
                    if !ok {
                        return Err("the port unreachable the node sent has a bad checksum".into());
                    }
                    rejected = true;
                    continue;
                }
                // What the dataplane sends back to a sender (an ICMP error) is not the frame.
                if p == id && rec.out_port != Some(id) {
                    continue;
                }
                if arrived.is_none() || Some(p) == rec.out_port {
                    arrived = Some((p, f));
                }
            }
        }
        let (verdict, out, translated) = match (arrived, rec.verdict) {
            (Some((p, bytes)), Verdict::Allow) => {
                if Some(p) != rec.out_port {
                    return Err(
                        format!("the trace says out {:?} but the frame came out of port {p}", rec.out_port).into()
                    );
                }
                let out = parse(&bytes).map_err(|m| format!("the rewritten frame does not parse: {}", m.as_str()))?;
                if !ipv4_header_ok(&bytes, &out) || !out.verify_l4_checksum(&bytes) {
                    return Err("the rewritten frame has a bad checksum".into());
                }
                (Verdict::Allow, self.egress(p), Some(SocketAddr::new(out.header.dst, out.header.dst_port)))
            }
            (None, Verdict::Allow) => {
                return Err(format!("the dataplane allowed the frame out of {:?} but nothing came out", rec.out).into())
            }
            (Some((p, bytes)), Verdict::Drop) => {
                let what = parse(&bytes).map(|x| format!("{:?}", x.header)).unwrap_or_default();
                return Err(format!("the dataplane dropped the frame but a frame came out of port {p}: {what}").into());
            }
            (None, Verdict::Drop) => (Verdict::Drop, None, None),
        };
        let tables = self.node.tables();
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
        self.node.clock.advance(by);
    }

    fn set_node(&mut self, node: &NodeConfig) -> Result<(), StepError> {
        Ok(self.node.set_node(node.clone())?)
    }
}

/// The frame a packet step describes: the packet itself, or the ICMP error quoting `inner`'s flow.
pub fn step_frame(pkt: &PacketHeader, inner: Option<Tuple>) -> Vec<u8> {
    let spec = FrameSpec::new(*pkt);
    match inner {
        Some(t) => {
            let quoted = PacketHeader {
                src: t.src,
                dst: t.dst,
                protocol: t.protocol,
                src_port: t.src_port,
                dst_port: t.dst_port,
                tcp_flags: 0,
                icmp_type: 8,
                icmp_code: 0,
                icmp_id: t.src_port,
            };
            build_icmp_error(&spec, &quoted)
        }
        None => spec.build(),
    }
}

/// Builds the level for a scenario.
pub fn build(node: &NodeConfig, resources: &ResourceSet) -> Box<dyn Dataplane> {
    Box::new(PipelineNode::new(node, resources))
}
