//! The tables workers read, and how they are swapped under them (DESIGN.md "Concurrency and table swap").
//!
//! The control thread publishes a complete [`TableSet`] with one `ArcSwap` store. A worker loads it once per
//! batch, so every frame of a batch sees one version. The control thread keeps every version it replaced
//! until no worker holds it any more, and frees it itself: a worker never runs a table's destructor on the
//! hot path.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;

use calxdp_policy::compile::CompiledTables;
use calxdp_policy::limit::Rate;
use calxdp_policy::resolve::ResolvedNode;

use crate::log::RuleLogLimits;
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
    /// The services by front end, for service NAT.
    pub services: crate::services::ServiceIndex,
    /// Unique in the process, across every slot (epochs restart with each publisher): what memos of
    /// this version's answers are keyed by (`walk_cache`).
    pub generation: u64,
    /// Addresses whose flows are flushed, with the epoch that removed them (semantics §8.2): every
    /// publication since the slowest reader last caught up, so a reader that skipped versions misses none.
    pub flushes: Vec<(u64, IpAddr)>,
    /// Each Log rule's rate limit, shared by the workers; carried from version to version for the rules
    /// that stay (`TableSlot::publish`).
    pub log_limits: Arc<RuleLogLimits>,
}

/// The Log rules' rate (`LogActionRateLimit`, `LogActionRateLimitBurst`) of a node's configuration.
fn log_rate(world: &ResolvedNode) -> Option<Rate> {
    let felix = &world.node.felix;
    felix.log_rate_limit.map(|r| Rate { interval: r.interval_nanos(), burst: u64::from(felix.log_burst()) })
}

static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl TableSet {
    /// Tables whose pods have port ids after the uplinks and the host, in node order.
    pub fn new(epoch: u64, world: Arc<ResolvedNode>, compiled: Arc<CompiledTables>) -> TableSet {
        let first = world.node.uplinks.len() as u16 + 1;
        let ids = (0..world.node.workloads.len() as u16).map(|w| first + w).collect();
        TableSet::with_ports(epoch, world, compiled, ids)
    }

    /// Tables with each local pod's port id given (the control thread keeps them stable across versions).
    pub fn with_ports(
        epoch: u64,
        world: Arc<ResolvedNode>,
        compiled: Arc<CompiledTables>,
        workload_ports: Vec<crate::ports::PortId>,
    ) -> TableSet {
        let ports = PortMap::with_workload_ports(&world, workload_ports);
        let service_ends = crate::owner::ServiceEnds::new(&world.node);
        let services = crate::services::ServiceIndex::new(&world.node);
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_limits = Arc::new(RuleLogLimits::new(&compiled.rules, log_rate(&world), None));
        TableSet { epoch, world, compiled, ports, service_ends, services, generation, flushes: Vec::new(), log_limits }
    }
}

/// Where workers find the current tables.
#[derive(Debug)]
pub struct TableSlot {
    current: ArcSwap<TableSet>,
    /// Replaced versions a worker may still hold; only the publishing thread touches this.
    retired: Mutex<Vec<Arc<TableSet>>>,
    /// Flushes not yet applied by every reader, and each reader's last applied epoch.
    flushes: Mutex<FlushLog>,
}

#[derive(Debug, Default)]
struct FlushLog {
    pending: Vec<(u64, IpAddr)>,
    readers: Vec<Weak<AtomicU64>>,
}

impl TableSlot {
    pub fn new(first: TableSet) -> TableSlot {
        TableSlot {
            current: ArcSwap::from_pointee(first),
            retired: Mutex::new(Vec::new()),
            flushes: Mutex::new(FlushLog::default()),
        }
    }

    /// A reader that applies flushes (a worker's pipeline) registers the epoch it has caught up to; a flush
    /// is kept in later versions until every registered reader has passed it.
    pub fn register_reader(&self) -> Arc<AtomicU64> {
        let ack = Arc::new(AtomicU64::new(self.epoch()));
        lock(&self.flushes).readers.push(Arc::downgrade(&ack));
        ack
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

    /// The oldest version a registered reader (a worker's pipeline) has taken up, if any reader is left: a
    /// version is in force on every worker once this reaches its epoch.
    pub fn slowest_reader(&self) -> Option<u64> {
        let log = lock(&self.flushes);
        log.readers.iter().filter_map(Weak::upgrade).map(|a| a.load(Ordering::Acquire)).min()
    }

    /// Publishes `next` (control thread only), then frees replaced versions nobody holds any more.
    pub fn publish(&self, next: TableSet) {
        self.publish_with_flushes(next, &[]);
    }

    /// Publishes `next` together with the addresses whose flows every reader must flush when it takes it.
    pub fn publish_with_flushes(&self, mut next: TableSet, flush: &[IpAddr]) {
        {
            let mut log = lock(&self.flushes);
            log.readers.retain(|r| r.strong_count() > 0);
            let slowest = log.readers.iter().filter_map(Weak::upgrade).map(|a| a.load(Ordering::Acquire)).min();
            match slowest {
                Some(e) => log.pending.retain(|(epoch, _)| *epoch > e),
                None => log.pending.clear(),
            }
            log.pending.extend(flush.iter().map(|ip| (next.epoch, *ip)));
            next.flushes = log.pending.clone();
        }
        // The Log rules that stay keep their buckets (a worker still on the old version may take a token
        // from the old copy meanwhile: at most a line more per rule and worker, once).
        let current = self.current.load();
        next.log_limits =
            Arc::new(RuleLogLimits::new(&next.compiled.rules, log_rate(&next.world), Some(&current.log_limits)));
        drop(current);
        let old = self.current.swap(Arc::new(next));
        let mut retired = lock(&self.retired);
        retired.push(old);
        Self::reap(&mut retired);
    }

    /// Frees the retired versions only the slot still holds. Returns how many are still in use.
    pub fn collect(&self) -> usize {
        let mut retired = lock(&self.retired);
        Self::reap(&mut retired);
        retired.len()
    }

    fn reap(retired: &mut Vec<Arc<TableSet>>) {
        let mut i = 0;
        while i < retired.len() {
            if Arc::strong_count(&retired[i]) > 1 {
                i += 1;
            } else {
                free_in_background(retired.swap_remove(i));
            }
        }
    }
}

/// Frees a version nobody holds on a thread of its own. A large node's tables are many allocations: freeing
/// one at 10 000 policies took half a second, after the next version was in force but before the control
/// thread could take the next change. The thread is started once and lives with the process; where it cannot
/// be started the version is freed here. Its queue is bounded: a publisher that retires versions faster than
/// they are freed waits for the thread, so versions waiting to be freed never pile up.
fn free_in_background(old: Arc<TableSet>) {
    const WAITING: usize = 2;
    static REAPER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Arc<TableSet>>>> = std::sync::OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<TableSet>>(WAITING);
        std::thread::Builder::new().name("calxdp-free".into()).spawn(move || rx.into_iter().for_each(drop)).ok()?;
        Some(tx)
    });
    match reaper {
        Some(tx) => {
            if let Err(std::sync::mpsc::SendError(old)) = tx.send(old) {
                drop(old);
            }
        }
        None => drop(old),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
