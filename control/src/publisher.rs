//! The control thread's side of policy: the resources in force, the compile, and the publication of new
//! tables. An update is built whole off the hot path and either published with one store or rejected
//! with the reason, leaving the running tables in place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use calxdp_dataplane::tables::{TableSet, TableSlot};
use calxdp_policy::compile::{CompileStats, ProgramCache};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::{ResourceDoc, ResourceKey, ResourceSet};

/// What a publication did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub epoch: u64,
    pub stats: CompileStats,
    /// From the start of the update to the store that made it visible to workers.
    pub took: Duration,
}

/// Why an update was not published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected(pub String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Owns the resources in force and publishes compiled tables into a [`TableSlot`].
#[derive(Debug)]
pub struct TablePublisher {
    node: NodeConfig,
    resources: ResourceSet,
    cache: ProgramCache,
    slot: Arc<TableSlot>,
    epoch: u64,
}

impl TablePublisher {
    /// Compiles the first tables and makes the slot workers will read.
    pub fn new(node: NodeConfig, resources: ResourceSet) -> TablePublisher {
        let mut cache = ProgramCache::new();
        let world = ResolvedNode::new(&node, &resources);
        let compiled = cache.compile(&world, 1);
        let slot = Arc::new(TableSlot::new(TableSet::new(1, Arc::new(world), Arc::new(compiled))));
        TablePublisher { node, resources, cache, slot, epoch: 1 }
    }

    pub fn slot(&self) -> Arc<TableSlot> {
        self.slot.clone()
    }

    pub fn resources(&self) -> &ResourceSet {
        &self.resources
    }

    /// Applies (creates or replaces) resources.
    pub fn apply(&mut self, docs: &[ResourceDoc]) -> Result<Published, Rejected> {
        let mut next = self.resources.clone();
        next.apply_all(docs.iter().map(|d| d.resource.clone()));
        self.replace(next)
    }

    /// Deletes a resource by key.
    pub fn delete(&mut self, key: &ResourceKey) -> Result<Published, Rejected> {
        let mut next = self.resources.clone();
        if next.delete(key) == 0 {
            return Err(Rejected(format!("delete {key}: no such resource")));
        }
        self.replace(next)
    }

    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    /// Puts a changed node in force (workloads and namespaces added, changed or removed) with the resources
    /// in force. Returns the publication and the addresses whose flows must be flushed: those a local
    /// workload had and no longer has (semantics §8.2).
    pub fn set_node(&mut self, node: NodeConfig) -> Result<(Published, Vec<std::net::IpAddr>), Rejected> {
        node.check().map_err(Rejected)?;
        let removed = calxdp_policy::node::removed_workload_addresses(&self.node, &node);
        let previous = std::mem::replace(&mut self.node, node);
        match self.publish(self.resources.clone(), &removed) {
            Ok(p) => Ok((p, removed)),
            Err(e) => {
                self.node = previous;
                Err(e)
            }
        }
    }

    /// Puts a whole resource set in force (a watched directory re-read, say).
    pub fn replace(&mut self, next: ResourceSet) -> Result<Published, Rejected> {
        self.publish(next, &[])
    }

    fn publish(&mut self, next: ResourceSet, flush: &[std::net::IpAddr]) -> Result<Published, Rejected> {
        let start = Instant::now();
        let world = ResolvedNode::new(&self.node, &next);
        let compiled = self.cache.compile(&world, self.epoch + 1);
        validate(&world, &compiled).map_err(Rejected)?;
        self.epoch += 1;
        let stats = compiled.stats;
        self.slot.publish_with_flushes(TableSet::new(self.epoch, Arc::new(world), Arc::new(compiled)), flush);
        self.resources = next;
        Ok(Published { epoch: self.epoch, stats, took: start.elapsed() })
    }
}

/// Checks a table set is complete before workers may see it: every local endpoint has its programs.
fn validate(world: &ResolvedNode, compiled: &calxdp_policy::compile::CompiledTables) -> Result<(), String> {
    if compiled.workloads.len() != world.workloads.len() || compiled.host_endpoints.len() != world.host_endpoints.len()
    {
        return Err("internal: compiled tables do not cover every endpoint".into());
    }
    Ok(())
}
