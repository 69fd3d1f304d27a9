//! The tables workers read, and how they are swapped under them (DESIGN.md "Concurrency and table swap").
//!
//! The control thread publishes a complete [`TableSet`] with one `ArcSwap` store. A worker loads it once per
//! batch, so every frame of a batch sees one version. The control thread keeps every version it replaced
//! until no worker holds it any more, and frees it itself: a worker never runs a table's destructor on the
//! hot path.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use calxdp_policy::compile::CompiledTables;
use calxdp_policy::resolve::ResolvedNode;

use crate::path::PortMap;

/// One consistent version of everything the pipeline decides with.
#[derive(Debug)]
pub struct TableSet {
    /// Increases by one with every publication.
    pub epoch: u64,
    /// The node and resources the tables were compiled from (endpoint bindings, services, configuration).
    pub world: Arc<ResolvedNode>,
    pub compiled: Arc<CompiledTables>,
    /// Port bindings resolved from `world`, so the hot path looks up no names.
    pub ports: PortMap,
    /// Service front ends and backends, for choosing a flow's owning worker.
    pub service_ends: crate::owner::ServiceEnds,
    /// Unique in the process, across every slot (epochs restart with each publisher): what memos of
    /// this version's answers are keyed by (`walk_cache`).
    pub generation: u64,
}

static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl TableSet {
    pub fn new(epoch: u64, world: Arc<ResolvedNode>, compiled: Arc<CompiledTables>) -> TableSet {
        let ports = PortMap::new(&world);
        let service_ends = crate::owner::ServiceEnds::new(&world.node);
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TableSet { epoch, world, compiled, ports, service_ends, generation }
    }
}

/// Where workers find the current tables.
#[derive(Debug)]
pub struct TableSlot {
    current: ArcSwap<TableSet>,
    /// Replaced versions a worker may still hold; only the publishing thread touches this.
    retired: Mutex<Vec<Arc<TableSet>>>,
}

impl TableSlot {
    pub fn new(first: TableSet) -> TableSlot {
        TableSlot { current: ArcSwap::from_pointee(first), retired: Mutex::new(Vec::new()) }
    }

    /// The current tables, for one batch. Lock-free.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<TableSet>> {
        self.current.load()
    }

    /// A counted reference to the current tables, as a long-lived holder (tests, the admin API) takes it.
    pub fn hold(&self) -> Arc<TableSet> {
        self.current.load_full()
    }

    pub fn epoch(&self) -> u64 {
        self.current.load().epoch
    }

    /// Publishes `next` (control thread only), then frees replaced versions nobody holds any more.
    pub fn publish(&self, next: TableSet) {
        let old = self.current.swap(Arc::new(next));
        let mut retired = match self.retired.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        retired.push(old);
        Self::reap(&mut retired);
    }

    /// Frees the retired versions only the slot still holds. Returns how many are still in use.
    pub fn collect(&self) -> usize {
        let mut retired = match self.retired.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        Self::reap(&mut retired);
        retired.len()
    }

    fn reap(retired: &mut Vec<Arc<TableSet>>) {
        retired.retain(|t| Arc::strong_count(t) > 1);
    }
}
