//! The pipeline parity level: every step through the dataplane's own staged pipeline, with the tables
//! published by the control side exactly as a live node publishes them.

use std::net::SocketAddr;
use std::time::Duration;

use calxdp_dataplane::flow::Nanos;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{explain, rule_ref, Packet, Pipeline};
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
        let pipeline = Pipeline::new(publisher.slot(), 65_536);
        PipelineNode { publisher, pipeline, node: node.clone(), now: 0 }
    }

    fn port(&self, at: &Attach) -> Result<Port, String> {
        match at {
            Attach::Host => Ok(Port::Host),
            Attach::Uplink(n) => self.node.uplink_by_name(n).map(|i| Port::Uplink(i as u16)).ok_or_else(|| format!("no interface {n}")),
            Attach::Workload(n) => self.node.workload_by_name(n).map(|i| Port::Workload(i as u16)).ok_or_else(|| format!("no workload {n}")),
        }
    }

    fn egress(&self, p: Port) -> Egress {
        match p {
            Port::Host => Egress::Host,
            Port::Uplink(u) => Egress::Uplink(self.node.uplinks[u as usize].name.clone()),
            Port::Workload(w) => Egress::Workload(self.node.workloads[w as usize].name.clone()),
        }
    }
}

impl Dataplane for PipelineNode {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), String> {
        self.publisher.replace(resources.clone()).map(|_| ()).map_err(|e| e.to_string())
    }

    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, String> {
        let port = self.port(at)?;
        let mut batch = [Packet::new(port, *pkt, inner)];
        self.pipeline.process(&mut batch, self.now);
        let p = &batch[0];
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
            translated: if p.verdict == Verdict::Allow { p.translated } else { None::<SocketAddr> },
            tracked,
            logs,
            reason: explain(&tables, &p.decision),
            trace: Vec::new(),
        })
    }

    fn advance(&mut self, by: Duration) {
        self.now += by.as_nanos() as Nanos;
    }
}

/// Builds the level for a scenario.
pub fn build(node: &NodeConfig, resources: &ResourceSet) -> Box<dyn Dataplane> {
    Box::new(PipelineNode::new(node, resources))
}
