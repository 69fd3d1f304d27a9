//! The operator's view of a running node (DESIGN.md "Where the design goes next"): a local API on a unix
//! socket (`status`, `conntrack`, `rules`, `explain`, `trace`) and Prometheus metrics over HTTP, served
//! by one thread running a small tokio runtime, away from the workers' cores.
//!
//! Reading state never blocks a worker. What the workers own (conntrack, rule hits, the next frames) is
//! asked of them through their command channel and answered between two rounds; their counters are the
//! snapshots they publish with a `try_lock` that skips when this side holds it. What the control thread
//! owns (the node, the resources, the ports, the last publication) it copies into [`NodeView`] when it
//! changes. Any node driver (`calxdp run`, `demo --keep`, the Felix driver) serves the API by making a
//! `NodeView` of its `LiveNode`, calling [`NodeView::refresh`] from its control loop, and starting a
//! [`server::AdminServer`].

pub mod answer;
pub mod client;
pub mod metrics;
pub mod proto;
pub mod server;

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use calxdp_dataplane::tables::TableSlot;
use calxdp_dataplane::worker::{Clock, WorkerCommand, WorkerShared};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::ResourceSet;

use crate::live::{LiveNode, PortState};

/// Where `calxdp run` and `demo --keep` serve the API unless told otherwise, and where the CLI asks, in
/// the machine's own network namespace (PID 1's).
pub const DEFAULT_SOCKET: &str = "/run/calxdp/admin.sock";

/// The default socket for a node started from this thread's network namespace: [`DEFAULT_SOCKET`] in the
/// machine's own, `/run/calxdp/admin-net<inode>.sock` in any other, so nodes in different namespaces on one
/// machine (tests, `ip netns exec`) each have their own and the CLI, run in the same namespace, finds it.
pub fn default_socket() -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let here = calxdp_dataplane::sys::netns::current_netns_id().ok();
    let init = std::fs::metadata("/proc/1/ns/net").ok().map(|m| m.ino());
    match here {
        Some(ns) if init != Some(ns) => format!("/run/calxdp/admin-net{ns}.sock").into(),
        _ => DEFAULT_SOCKET.into(),
    }
}

/// How long the control loop waits for every worker to take new tables, to measure enforcement.
const ENFORCE_WAIT: Duration = Duration::from_millis(200);

/// Everything the admin API reads of a running node.
#[derive(Debug)]
pub struct NodeView {
    pub slot: Arc<TableSlot>,
    pub clock: Arc<Clock>,
    pub workers: Vec<WorkerLink>,
    pub capacity: usize,
    pub started: Instant,
    /// What the control thread owns, copied here when it changes. Only the control thread and the admin
    /// thread take this lock, never a worker.
    control: Mutex<ControlState>,
    /// One `trace` at a time: a worker traces for one asker.
    pub tracing: Mutex<()>,
}

/// A worker as the admin API reaches it.
#[derive(Debug)]
pub struct WorkerLink {
    pub commands: Sender<WorkerCommand>,
    pub shared: Arc<WorkerShared>,
}

/// What the control thread knows and the admin API shows.
#[derive(Clone, Debug)]
pub struct ControlState {
    /// The node as given (the node file), and the resources in force: what `explain` evaluates.
    pub node: NodeConfig,
    pub resources: ResourceSet,
    pub ports: Vec<PortState>,
    /// When the tables in force were published.
    pub tables_since: SystemTime,
    pub last_update: Option<Update>,
    pub publications: u64,
    /// From the start of each publication's compile to its enforcement on every worker.
    pub enforce_seconds: Histogram,
    /// From the start of each publication's compile to its swap.
    pub apply_seconds: Summary,
    /// Updates rejected whole (bad input; the running tables stay), as the node driver counts them.
    pub rejected_updates: u64,
}

/// A Prometheus summary without quantiles: how many observations and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub sum: f64,
    pub count: u64,
}

impl Summary {
    pub fn observe(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
    }
}

/// A publication after the first tables.
#[derive(Clone, Copy, Debug)]
pub struct Update {
    pub version: u64,
    pub at: SystemTime,
    pub compile: Duration,
    pub enforced: Option<Duration>,
}

/// A Prometheus histogram: cumulative bucket counts, sum and count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Bounds for the time a policy change takes to be enforced, in seconds (0.5 ms to 10 s).
    pub const ENFORCE_BOUNDS: &'static [f64] =
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, buckets: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if v <= *bound {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

impl NodeView {
    /// The view of `live` as it is now.
    pub fn new(live: &mut LiveNode) -> Arc<NodeView> {
        let workers: Vec<WorkerLink> =
            live.worker_links().into_iter().map(|(commands, shared)| WorkerLink { commands, shared }).collect();
        let control = ControlState {
            node: live.publisher.node().clone(),
            resources: live.publisher.resources().clone(),
            ports: live.port_states(),
            tables_since: SystemTime::now(),
            last_update: None,
            publications: 0,
            enforce_seconds: Histogram::new(Histogram::ENFORCE_BOUNDS),
            apply_seconds: Summary::default(),
            rejected_updates: live.rejected_updates,
        };
        Arc::new(NodeView {
            slot: live.publisher.slot(),
            clock: live.clock.clone(),
            capacity: live.flow_capacity(),
            workers,
            started: Instant::now(),
            control: Mutex::new(control),
            tracing: Mutex::new(()),
        })
    }

    /// Brings the view up to date with `live` (the control loop calls it after each look at its sources).
    /// A new publication is recorded with its compile time and the time until every worker took it: this
    /// waits for that, up to a fifth of a second, on the control thread.
    pub fn refresh(&self, live: &mut LiveNode) {
        let ports = live.port_states();
        let epoch = self.slot.epoch();
        let published = live.publisher.last_published().filter(|p| p.epoch == epoch);
        let known = self.control().last_update.map(|u| u.version);
        let mut update = None;
        if let Some(p) = published {
            if known != Some(p.epoch) {
                let since = Instant::now();
                let mut enforced = None;
                while since.elapsed() < ENFORCE_WAIT {
                    if self.slot.slowest_reader().is_none_or(|e| e >= p.epoch) {
                        enforced = Some(p.took + since.elapsed());
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                update = Some(Update { version: p.epoch, at: SystemTime::now(), compile: p.took, enforced });
            }
        }
        let mut c = self.control();
        c.ports = ports;
        c.rejected_updates = live.rejected_updates;
        if let Some(u) = update {
            c.apply_seconds.observe(u.compile.as_secs_f64());
            c.node = live.publisher.node().clone();
            c.resources = live.publisher.resources().clone();
            c.tables_since = u.at;
            c.publications += 1;
            if let Some(e) = u.enforced {
                c.enforce_seconds.observe(e.as_secs_f64());
            }
            c.last_update = Some(u);
        }
    }

    /// The control thread's state (a short lock between the control and admin threads only).
    pub fn control(&self) -> MutexGuard<'_, ControlState> {
        match self.control.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
