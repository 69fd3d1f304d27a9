//! The control thread's side of policy: the resources in force, the compile, and the publication of new
//! tables. An update is built whole off the hot path and either published with one store or rejected
//! with the reason, leaving the running tables in place.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calxdp_dataplane::ports::PortId;
use calxdp_dataplane::tables::{TableSet, TableSlot};
use calxdp_policy::compile::{CompileStats, ProgramCache};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::{Entity, ResolvedNode};
use calxdp_policy::resource::{Policy, Resource, ResourceDoc, ResourceKey, ResourceSet};

/// What a publication did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub epoch: u64,
    pub stats: CompileStats,
    /// From the start of the update to the store that made it visible to workers.
    pub took: Duration,
}

/// Why an update was not published; the tables in force stay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("delete {0}: no such resource")]
    NoSuchResource(ResourceKey),
    #[error(transparent)]
    Node(#[from] calxdp_policy::node::NodeError),
    #[error("the node's interfaces (uplinks) changed: restart calxdp to take them over")]
    UplinksChanged,
}

/// What a patch publication changes ([`TablePublisher::patch`]), the rest of the model staying as in force:
/// entities `removed` taken out and `added` put in (IP set members, from Felix's deltas), the node's
/// workloads replaced by `workloads` when given, and `policies` — new versions of policies in force whose
/// rules alone changed (same id, tier, order, selector, types and stage flags).
#[derive(Debug, Default)]
pub struct Patch {
    pub removed: Vec<Entity>,
    pub added: Vec<Entity>,
    pub workloads: Option<Vec<calxdp_policy::node::Workload>>,
    pub policies: Vec<Arc<Policy>>,
}

/// Whether `new` is `old` with other rules only: what a policy patch may change.
fn rules_alone_differ(old: &Policy, new: &Policy) -> bool {
    old.id == new.id
        && old.tier == new.tier
        && old.order == new.order
        && old.selector == new.selector
        && (old.applies_ingress, old.applies_egress) == (new.applies_ingress, new.applies_egress)
        && (old.do_not_track, old.pre_dnat, old.apply_on_forward)
            == (new.do_not_track, new.pre_dnat, new.apply_on_forward)
}

/// The port ids of the pods' interfaces (`calxdp_dataplane::ports`): an interface keeps its id from the
/// table version that adds it until it is detached and released; released ids are reused oldest first, so
/// a frame still in flight from a detached interface is unlikely to meet its id's next owner.
#[derive(Debug)]
pub struct PortIds {
    by_interface: BTreeMap<String, PortId>,
    free: VecDeque<PortId>,
    next: PortId,
}

impl PortIds {
    /// Ids for pods start after the uplinks (`0..uplinks`) and the host (`uplinks`).
    pub fn new(uplinks: usize) -> PortIds {
        PortIds { by_interface: BTreeMap::new(), free: VecDeque::new(), next: uplinks as PortId + 1 }
    }

    /// The id of an interface, given one if it has none.
    pub fn id(&mut self, interface: &str) -> PortId {
        if let Some(id) = self.by_interface.get(interface) {
            return *id;
        }
        // Reuse only once enough ids have been freed that the oldest has surely drained.
        let id = if self.free.len() > 64 || self.next == PortId::MAX {
            self.free.pop_front().expect("ids to reuse")
        } else {
            self.next += 1;
            self.next - 1
        };
        self.by_interface.insert(interface.to_string(), id);
        id
    }

    /// The id an interface has, if any.
    pub fn get(&self, interface: &str) -> Option<PortId> {
        self.by_interface.get(interface).copied()
    }

    /// Frees the id of an interface that is detached everywhere.
    pub fn release(&mut self, interface: &str) {
        if let Some(id) = self.by_interface.remove(interface) {
            self.free.push_back(id);
        }
    }

    /// The ids of the node's local pods, in node order (given where missing).
    fn of(&mut self, node: &NodeConfig) -> Vec<PortId> {
        node.workloads.iter().map(|w| self.id(w.interface.as_deref().unwrap_or(&w.name))).collect()
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
    pub ports: PortIds,
    /// The last publication after the first tables (for the operator: when, and how long it took).
    last: Option<Published>,
}

impl TablePublisher {
    /// Compiles the first tables and makes the slot workers will read.
    pub fn new(node: NodeConfig, resources: ResourceSet) -> TablePublisher {
        let mut cache = ProgramCache::new();
        let mut ports = PortIds::new(node.uplinks.len());
        let world = ResolvedNode::new(&node, &resources);
        let compiled = cache.compile(&world, 1);
        let ids = ports.of(&node);
        let slot = Arc::new(TableSlot::new(TableSet::with_ports(1, Arc::new(world), Arc::new(compiled), ids)));
        TablePublisher { node, resources, cache, slot, epoch: 1, ports, last: None }
    }

    /// The last publication since the first tables, if any.
    pub fn last_published(&self) -> Option<Published> {
        self.last
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
            return Err(Rejected::NoSuchResource(key.clone()));
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
        node.check()?;
        if node.uplinks != self.node.uplinks {
            return Err(Rejected::UplinksChanged);
        }
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

    /// Puts a changed node and a changed resource set in force with one publication, so no table ever pairs
    /// the new endpoints with the old policies (Felix's driver receives both in one flush). Returns what
    /// [`TablePublisher::set_node`] returns; an error leaves both as they were.
    pub fn set_model(
        &mut self,
        node: NodeConfig,
        next: ResourceSet,
    ) -> Result<(Published, Vec<std::net::IpAddr>), Rejected> {
        node.check()?;
        if node.uplinks != self.node.uplinks {
            return Err(Rejected::UplinksChanged);
        }
        let removed = calxdp_policy::node::removed_workload_addresses(&self.node, &node);
        let previous = std::mem::replace(&mut self.node, node);
        match self.publish(next, &removed) {
            Ok(p) => Ok((p, removed)),
            Err(e) => {
                self.node = previous;
                Err(e)
            }
        }
    }

    /// Puts in force the tables in force with only what `patch` says changed, without resolving the node
    /// again: the programs that read an address set the entity change touches are patched, each workload
    /// gets the programs of an endpoint like it (`ProgramCache::patch`), and the programs that walk a changed
    /// policy get its new rules spliced in (`ProgramCache::patch_policies`); what cannot be patched is
    /// compiled. Entities live in the published world only (the next whole publication,
    /// [`TablePublisher::set_model`], replaces it); patched policies replace theirs in the resource set in
    /// force. Returns the publication and the addresses whose flows were flushed (as
    /// [`TablePublisher::set_node`]); `None`, with nothing changed, when the change is more than that (the
    /// node's rest, its Felix configuration or its generated profiles differ, a removed entity is not in the
    /// world, a policy is not in force or more than its rules changed, or policies changed beside entities
    /// or workloads): put the whole model in force instead.
    pub fn patch(&mut self, patch: Patch) -> Result<Option<(Published, Vec<std::net::IpAddr>)>, Rejected> {
        let start = Instant::now();
        let Patch { removed, added, workloads, policies } = patch;
        if !policies.is_empty() {
            if !(removed.is_empty() && added.is_empty() && workloads.is_none()) {
                return Ok(None);
            }
            return Ok(self.patch_policies(policies, start));
        }
        let current = self.slot.hold();
        let mut world = (*current.world).clone();
        // Entities after the local workloads' (which come first, in node order) are set members and the rest.
        let locals = world.workloads.len();
        for e in &removed {
            match world.entities[locals..].iter().position(|x| **x == *e) {
                Some(i) => {
                    world.entities.remove(locals + i);
                }
                None => return Ok(None),
            }
        }
        world.entities.extend(added.iter().cloned().map(Arc::new));
        let (mut removed, mut added) = (removed, added);
        let mut next_node = None;
        let mut flush = Vec::new();
        if let Some(workloads) = workloads {
            let node = NodeConfig {
                name: self.node.name.clone(),
                uplinks: self.node.uplinks.clone(),
                namespaces: self.node.namespaces.clone(),
                workloads,
                remote_endpoints: self.node.remote_endpoints.clone(),
                services: self.node.services.clone(),
                felix: self.node.felix.clone(),
            };
            node.check()?;
            let Some((patched, gone, came)) = world.with_workloads(&node, &self.resources) else {
                return Ok(None);
            };
            world = patched;
            removed.extend(gone);
            added.extend(came);
            flush = calxdp_policy::node::removed_workload_addresses(&self.node, &node);
            next_node = Some(node);
        }
        let epoch = self.epoch + 1;
        let compiled = match self.cache.patch(&world, &current.compiled, &removed, &added, next_node.is_some(), epoch) {
            Some(c) => c,
            None => self.cache.compile(&world, epoch),
        };
        if let Some(node) = next_node {
            self.node = node;
        }
        let published = self.put_in_force(epoch, world, compiled, &flush, start);
        Ok(Some((published, flush)))
    }

    /// [`TablePublisher::patch`] of policies whose rules alone changed.
    fn patch_policies(
        &mut self,
        policies: Vec<Arc<Policy>>,
        start: Instant,
    ) -> Option<(Published, Vec<std::net::IpAddr>)> {
        let current = self.slot.hold();
        let mut world = (*current.world).clone();
        let mut all = (*world.policies).clone();
        let mut changed = Vec::with_capacity(policies.len());
        for new in &policies {
            let i = all.iter().position(|p| p.id == new.id)?;
            if !rules_alone_differ(&all[i], new) {
                return None;
            }
            changed.push((i, std::mem::replace(&mut all[i], new.clone())));
        }
        world.policies = Arc::new(all);
        let epoch = self.epoch + 1;
        let compiled = match self.cache.patch_policies(&world, &current.compiled, &changed, epoch) {
            Some(c) => c,
            None => self.cache.compile(&world, epoch),
        };
        for p in policies {
            self.resources.apply(Resource::Policy(p));
        }
        Some((self.put_in_force(epoch, world, compiled, &[], start), Vec::new()))
    }

    /// Publishes tables made from the tables in force (a patch) as version `epoch`.
    fn put_in_force(
        &mut self,
        epoch: u64,
        world: ResolvedNode,
        compiled: calxdp_policy::compile::CompiledTables,
        flush: &[std::net::IpAddr],
        start: Instant,
    ) -> Published {
        self.epoch = epoch;
        let stats = compiled.stats;
        let ids = self.ports.of(&self.node);
        self.slot.publish_with_flushes(TableSet::with_ports(epoch, Arc::new(world), Arc::new(compiled), ids), flush);
        let published = Published { epoch, stats, took: start.elapsed() };
        self.last = Some(published);
        published
    }

    /// Puts a whole resource set in force (a watched directory re-read, say).
    pub fn replace(&mut self, next: ResourceSet) -> Result<Published, Rejected> {
        self.publish(next, &[])
    }

    fn publish(&mut self, next: ResourceSet, flush: &[std::net::IpAddr]) -> Result<Published, Rejected> {
        let start = Instant::now();
        let world = ResolvedNode::new(&self.node, &next);
        // Complete by construction: `compile` builds the programs of every workload and host endpoint of
        // `world`, in its order (so there is no check here that could only ever pass).
        let compiled = self.cache.compile(&world, self.epoch + 1);
        self.epoch += 1;
        let stats = compiled.stats;
        let ids = self.ports.of(&self.node);
        self.slot
            .publish_with_flushes(TableSet::with_ports(self.epoch, Arc::new(world), Arc::new(compiled), ids), flush);
        self.resources = next;
        let published = Published { epoch: self.epoch, stats, took: start.elapsed() };
        self.last = Some(published);
        Ok(published)
    }
}
