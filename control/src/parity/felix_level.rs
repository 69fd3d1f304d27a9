//! The felix parity level: each scenario state goes through Felix's driver protocol before it reaches the
//! pipeline. The emulated Felix (`felix::emulator`) turns the scenario's node and resources into the
//! messages Felix's calc graph would send — a snapshot with `InSync` first, then, at every step that changes
//! resources or the node, the difference in Felix's flush order — which cross a real pipe, framed, into the
//! driver's front end; what the front end holds is lowered to calxdp's model and published to the same
//! production worker the pipeline level drives. A change of Felix configuration makes Felix restart, so it
//! starts a new session (a fresh stream and a fresh front end) under the running dataplane, as a driver that
//! outlives Felix sees it.

use std::io::Read;
use std::time::Duration;

use calxdp_policy::ids::Tuple;
use calxdp_policy::node::{FelixConfig, NodeConfig};
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::Attach;
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::verdict::Outcome;

use super::pipeline_level::PipelineNode;
use super::{Dataplane, StepError};
use crate::felix::driver::{read_all, FrontEnd};
use crate::felix::emulator::{Emulator, FelixView};
use crate::felix::framing::{pipe, write_frame};
use crate::felix::proto::ToDataplane;
use crate::offline::OfflineNode;

/// Sends `msgs` through a pipe into `front`, framed as Felix frames them; returns how many it applied.
pub fn through_pipe(msgs: Vec<ToDataplane>, front: &mut FrontEnd) -> Result<usize, StepError> {
    let (mut reader, mut writer) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let sent = msgs.len();
    let writer_thread = std::thread::spawn(move || -> std::io::Result<()> {
        for m in &msgs {
            write_frame(&mut writer, m)?;
        }
        Ok(())
    });
    let got = read_all(front, &mut reader, None);
    // Drain what a failed read left, so the writer never blocks on a full pipe.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    let written = writer_thread.join().map_err(|_| "the emulator's writer thread panicked")?;
    let got = got?;
    written.map_err(|e| format!("writing the stream: {e}"))?;
    if got != sent {
        return Err(format!("the driver applied {got} of {sent} messages").into());
    }
    Ok(got)
}

/// The node options the driver is started with: the scenario's node with Felix's defaults, since the
/// emulated Felix sends the node's `config:` (and the FelixConfigurations over it) in its `ConfigUpdate`.
fn options(node: &NodeConfig) -> NodeConfig {
    NodeConfig { felix: FelixConfig::default(), ..node.clone() }
}

/// A pipeline node fed by the emulated Felix.
#[derive(Debug)]
pub struct FelixNode {
    inner: PipelineNode,
    emulator: Emulator,
    front: FrontEnd,
    node: NodeConfig,
    resources: ResourceSet,
}

impl FelixNode {
    pub fn new(node: &NodeConfig, resources: &ResourceSet) -> Result<FelixNode, StepError> {
        let mut emulator = Emulator::new();
        let mut front = FrontEnd::new(&options(node));
        through_pipe(emulator.update(FelixView::compute(node, resources)?), &mut front)?;
        if !front.state.in_sync {
            return Err("the emulated Felix sent no InSync".into());
        }
        let (model_node, model_resources) = front.model()?;
        let offline = OfflineNode::new(model_node, model_resources, false);
        front.published_whole();
        Ok(FelixNode {
            inner: PipelineNode::from_offline(offline),
            emulator,
            front,
            node: node.clone(),
            resources: resources.clone(),
        })
    }

    /// Sends what changed and publishes the driver's new model.
    fn sync(&mut self, node: &NodeConfig, resources: &ResourceSet) -> Result<(), StepError> {
        let view = FelixView::compute(node, resources)?;
        if self.emulator.needs_restart(&view) {
            self.emulator = Emulator::new();
            self.front = FrontEnd::new(&options(node));
        } else {
            self.front.set_base(&options(node));
        }
        through_pipe(self.emulator.update(view), &mut self.front)?;
        // Published as the driver publishes: member changes alone are patched into the tables, anything
        // else puts the whole model in force.
        self.front.publish(self.inner.offline_mut())??;
        self.node = node.clone();
        self.resources = resources.clone();
        Ok(())
    }
}

impl Dataplane for FelixNode {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), StepError> {
        let node = self.node.clone();
        self.sync(&node, resources)
    }

    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, StepError> {
        self.inner.process(at, pkt, inner)
    }

    fn advance(&mut self, by: Duration) {
        self.inner.advance(by)
    }

    fn set_node(&mut self, node: &NodeConfig) -> Result<(), StepError> {
        let resources = self.resources.clone();
        self.sync(node, &resources)
    }
}

pub fn build(node: &NodeConfig, resources: &ResourceSet) -> Result<Box<dyn Dataplane>, StepError> {
    Ok(Box::new(FelixNode::new(node, resources)?))
}
