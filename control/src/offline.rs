//! A node without interfaces: the production worker (`calxdp_dataplane::worker`) over in-memory ports, one
//! per uplink and pod and one for the host, driven round by round with a clock that moves only when told.
//! The pipeline parity level and `replay` run on it, so they exercise the same batch code as a live node:
//! conntrack sweeps, neighbour resolution, handoff-free single-worker rounds, rewrite, logs and traces.
//!
//! The hosts at the other end of the ports answer ARP and neighbour solicitations (`wire_hosts`).

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::Pipeline;
use calxdp_dataplane::ports::{MemoryPort, PortId, PortIo};
use calxdp_dataplane::tables::TableSet;
use calxdp_dataplane::worker::{Clock, LogOutput, TraceRecord, Worker, WorkerShared};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::ResourceSet;

use crate::publisher::{Rejected, TablePublisher};
use crate::wire_hosts;

/// Rounds a frame may take to settle (resolution and handoff included) before the harness gives up.
const MAX_ROUNDS: usize = 64;

/// A frame was given to a port that has no memory port attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("port {0} is not attached")]
pub struct NotAttached(pub PortId);

/// A node on memory ports, and what it sends.
#[derive(Debug)]
pub struct OfflineNode {
    pub publisher: TablePublisher,
    pub worker: Worker,
    pub clock: Arc<Clock>,
    trace: Receiver<TraceRecord>,
    logs: Option<Receiver<String>>,
    /// Pods' interfaces with a memory port, by name.
    attached: BTreeMap<String, PortId>,
}

impl OfflineNode {
    /// The node with its resources; with `log_lines`, the Log rules' lines are kept (each rule rate-limited
    /// as Felix configures) for [`OfflineNode::take_log_lines`].
    pub fn new(mut node: NodeConfig, resources: ResourceSet, log_lines: bool) -> OfflineNode {
        // A live node reads each uplink's MAC off its interface; these interfaces have none, so an uplink
        // without one in the node file gets a locally administered stand-in.
        for (u, up) in node.uplinks.iter_mut().enumerate() {
            up.mac.get_or_insert([0x02, 0xca, 0x1c, 0xff, 0, u as u8 + 1]);
        }
        let publisher = TablePublisher::new(node.clone(), resources);
        let clock = Arc::new(Clock::manual());
        // The capacity in force: the node's, or a FelixConfiguration's over it.
        let capacity = publisher.slot().hold().world.node.felix.conntrack_capacity;
        let pipeline = Pipeline::new(publisher.slot(), capacity);
        let uplinks = node.uplinks.len();
        let ports = (0..=uplinks).map(|_| Some(PortIo::Memory(MemoryPort::new()))).collect();
        let (trace_tx, trace) = sync_channel(4096);
        let (logs, log_rx) = if log_lines {
            let (tx, rx) = sync_channel(4096);
            (Some(LogOutput { queue: tx }), Some(rx))
        } else {
            (None, None)
        };
        let worker = Worker::new(
            pipeline,
            ports,
            uplinks,
            Arc::new(WorkerShared::default()),
            clock.clone(),
            Some(trace_tx),
            logs,
        );
        let mut n = OfflineNode { publisher, worker, clock, trace, logs: log_rx, attached: BTreeMap::new() };
        n.attach_pods();
        n
    }

    /// The tables in force.
    pub fn tables(&self) -> Arc<TableSet> {
        self.publisher.slot().hold()
    }

    /// The port id of a port of the current tables.
    pub fn id_of(&self, p: Port) -> PortId {
        self.tables().ports.id_of(p)
    }

    /// Gives every local pod of the current node a memory port, and takes them from pods that are gone.
    fn attach_pods(&mut self) {
        let node = self.publisher.node().clone();
        let wanted: BTreeMap<String, PortId> = node
            .workloads
            .iter()
            .filter_map(|w| w.interface.clone())
            .filter_map(|i| self.publisher.ports.get(&i).map(|id| (i, id)))
            .collect();
        let gone: Vec<(String, PortId)> =
            self.attached.iter().filter(|(i, _)| !wanted.contains_key(*i)).map(|(i, id)| (i.clone(), *id)).collect();
        for (iface, id) in gone {
            self.worker.detach(id);
            self.attached.remove(&iface);
            self.publisher.ports.release(&iface);
        }
        for (iface, id) in wanted {
            if !self.attached.contains_key(&iface) {
                self.worker.attach(id, PortIo::Memory(MemoryPort::new()));
                self.attached.insert(iface, id);
            }
        }
    }

    /// Puts a changed node in force: tables first (with the flushes of addresses that went away), then the
    /// pods' ports.
    pub fn set_node(&mut self, mut node: NodeConfig) -> Result<(), Rejected> {
        for (u, old) in node.uplinks.iter_mut().zip(&self.publisher.node().uplinks) {
            if u.mac.is_none() {
                u.mac = old.mac;
            }
        }
        self.publisher.set_node(node)?;
        self.attach_pods();
        Ok(())
    }

    /// [`OfflineNode::set_node`] with a new resource set too, in one publication.
    pub fn set_model(&mut self, mut node: NodeConfig, resources: ResourceSet) -> Result<(), Rejected> {
        for (u, old) in node.uplinks.iter_mut().zip(&self.publisher.node().uplinks) {
            if u.mac.is_none() {
                u.mac = old.mac;
            }
        }
        self.publisher.set_model(node, resources)?;
        self.attach_pods();
        Ok(())
    }

    /// IP set members and workloads changed and nothing else (the Felix driver's patch path): the published
    /// programs are patched and the pods' ports follow, as `calxdp felix-driver` does. `false`, with nothing
    /// changed, when the change is more than a patch ([`TablePublisher::patch`]).
    pub fn patch(&mut self, patch: crate::publisher::Patch) -> Result<bool, Rejected> {
        let workloads_changed = patch.workloads.is_some();
        if self.publisher.patch(patch)?.is_none() {
            return Ok(false);
        }
        if workloads_changed {
            self.attach_pods();
        }
        Ok(true)
    }

    /// Queues a frame to arrive on port `id`.
    pub fn inject(&mut self, id: PortId, frame: Vec<u8>) -> Result<(), NotAttached> {
        let port = self.worker.memory_port(id).ok_or(NotAttached(id))?;
        port.rx.push_back(frame);
        Ok(())
    }

    /// Runs rounds until nothing moves: every injected frame decided, next hops resolved by the wire's hosts
    /// (their answers fed back in), held frames sent. Returns the trace of every frame decided.
    pub fn settle(&mut self) -> Vec<TraceRecord> {
        let mut records = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let moved = self.worker.round();
            let answered = self.answer_wire();
            records.extend(self.trace.try_iter());
            if moved == 0 && answered == 0 {
                break;
            }
        }
        records
    }

    /// Plays the hosts on the wire: every ARP request and neighbour solicitation the dataplane sent out of
    /// an uplink or a pod's port is answered into that port. Returns how many.
    fn answer_wire(&mut self) -> usize {
        let host = self.worker.host_port();
        let ids: Vec<PortId> = (0..host).chain(self.attached.values().copied()).collect();
        let mut answered = 0;
        for id in ids {
            let Some(port) = self.worker.memory_port(id) else { continue };
            let answers: Vec<Vec<u8>> = port.tx.iter().filter_map(|f| wire_hosts::answer(f)).collect();
            if answers.is_empty() {
                continue;
            }
            port.tx.retain(|f| wire_hosts::answer(f).is_none());
            answered += answers.len();
            port.rx.extend(answers);
        }
        answered
    }

    /// Takes every frame sent out of port `id` since the last call.
    pub fn take_sent(&mut self, id: PortId) -> Vec<Vec<u8>> {
        self.worker.memory_port(id).map(|p| std::mem::take(&mut p.tx)).unwrap_or_default()
    }

    /// Every port id with a memory port: the uplinks, the host, then the pods.
    pub fn port_ids(&self) -> Vec<PortId> {
        (0..=self.worker.host_port()).chain(self.attached.values().copied()).collect()
    }

    /// The Log rules' lines written since the last call.
    pub fn take_log_lines(&mut self) -> Vec<String> {
        self.logs.as_ref().map(|rx| rx.try_iter().collect()).unwrap_or_default()
    }
}
