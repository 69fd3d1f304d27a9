//! The pipeline parity level: every step through the dataplane's own staged pipeline, with the tables
//! published by the control side exactly as a live node publishes them.

use std::net::SocketAddr;
use std::time::Duration;

use calxdp_dataplane::flow::Nanos;
use calxdp_dataplane::frames::{ingest, ipv4_header_ok, rewrite};
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{explain, rule_ref, Pipeline};
use calxdp_dataplane::wire::{build_icmp_error, parse, FrameSpec};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::flows::Tuple;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::reference::Attach;
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::verdict::{Egress, Outcome, Verdict};

use super::Dataplane;
use crate::publisher::TablePublisher;

/// A publisher and one worker's pipeline, with a clock the scenario controls.
#[derive(Debug)]
pub struct PipelineNode {
    publisher: TablePublisher,
    pipeline: Pipeline,
    node: NodeConfig,
    now: Nanos,
}

impl PipelineNode {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> PipelineNode {
        let publisher = TablePublisher::new(node.clone(), resources.clone());
        let pipeline = Pipeline::new(publisher.slot(), node.felix.conntrack_capacity);
        PipelineNode { publisher, pipeline, node: node.clone(), now: 0 }
    }

    fn port(&self, at: &Attach) -> Result<Port, String> {
        super::port_of(&self.node, at)
    }

    fn egress(&self, p: Port) -> Egress {
        super::egress_of(&self.node, p)
    }
}

impl Dataplane for PipelineNode {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), String> {
        self.publisher.replace(resources.clone()).map(|_| ()).map_err(|e| e.to_string())
    }

    /// The step as a real frame: built, parsed, decided, rewritten, and parsed again on the way out.
    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, String> {
        let port = self.port(at)?;
        let mut frame = step_frame(pkt, inner);
        let (packet, parsed) = ingest(port, &frame);
        let Some(parsed) = parsed else { return Err(format!("the built frame does not parse: {:?}", packet.decision)) };
        if packet.header != *pkt {
            return Err(format!("the frame parsed back as {:?}", packet.header));
        }
        let mut batch = [packet];
        self.pipeline.process(&mut batch, self.now);
        let p = &batch[0];
        let mut translated = None;
        if p.verdict == Verdict::Allow {
            rewrite(&mut frame, &parsed, p, &self.pipeline.tables().ports).map_err(|e| format!("rewrite: {e:?}"))?;
            let out = parse(&frame).map_err(|m| format!("the rewritten frame does not parse: {}", m.as_str()))?;
            if !ipv4_header_ok(&frame, &out) || !out.verify_l4_checksum(&frame) {
                return Err("the rewritten frame has a bad checksum".into());
            }
            translated = Some(SocketAddr::new(out.header.dst, out.header.dst_port));
        }
        let tables = self.pipeline.tables();
        let logs = p
            .logs
            .iter()
            .flatten()
            .map(|h| log_for(&tables.world, rule_ref(&tables, h.ep, h.stage, h.dir, h.rule)))
            .collect();
        let tracked = self.pipeline.flows.tracks(pkt, self.now);
        Ok(Outcome {
            verdict: p.verdict,
            out: if p.verdict == Verdict::Allow { p.out.map(|o| self.egress(o)) } else { None },
            translated,
            tracked,
            logs,
            reason: explain(&tables, &p.decision),
            trace: Vec::new(),
        })
    }

    fn advance(&mut self, by: Duration) {
        self.now += by.as_nanos() as Nanos;
    }

    fn set_node(&mut self, node: &NodeConfig) -> Result<(), String> {
        // The flushes travel with the tables that remove the addresses; the pipeline takes them with its
        // next frame.
        self.publisher.set_node(node.clone()).map_err(|e| e.to_string())?;
        self.node = node.clone();
        Ok(())
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
