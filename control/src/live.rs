//! The live node: the node's interfaces taken over through XDP and AF_XDP, the host tap, and the workers
//! (DESIGN.md "The node"). Everything it sets up is undone when it stops, or by the kernel if the process
//! dies: the XDP programs hang on bpf_links and the tap on its file descriptors.
//!
//! Ports come and go while the node runs: a pod's veth is attached when its workload is in the node and the
//! interface exists (whichever comes first), detached when either goes away, and attached again when a veth
//! of that name comes back (`supervise`, called by the control loop). The other ports lose nothing meanwhile:
//! a worker takes a new socket or gives one back between two rounds.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use calxdp_dataplane::arp::Neighbours;
use calxdp_dataplane::flow::FlowStats;
use calxdp_dataplane::log::{self, WriterState};
use calxdp_dataplane::pipeline::{Counters, Pipeline};
use calxdp_dataplane::ports::{PortId, PortIo};
use calxdp_dataplane::sys::handoff::{self, HandoffReceiver, HandoffSender};
use calxdp_dataplane::sys::netns;
use calxdp_dataplane::sys::socket::{XskConfig, XskSocket};
use calxdp_dataplane::sys::tap::Tap;
use calxdp_dataplane::worker::{Clock, IoCounters, LogOutput, TraceRecord, Worker, WorkerCommand, WorkerShared};
use calxdp_dataplane::xdp::Redirect;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::ResourceSet;

use crate::netlink::{NetlinkError, RouteSocket};
use crate::publisher::{Rejected, TablePublisher};

/// Frames in flight from one worker to another.
const HANDOFF_SLOTS: u32 = 1024;
/// Log lines queued for the writer thread before workers start dropping (counted) rather than wait.
const LOG_QUEUE: usize = 4096;
/// How long a worker may take to give back a detached port's queue.
const DETACH_WITHIN: Duration = Duration::from_secs(2);
/// How long an interface that failed to attach is left alone before the next try.
const RETRY_ATTACH_AFTER: Duration = Duration::from_secs(5);

/// How to run the node.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Worker threads; each owns queue i of every interface and of the tap.
    pub workers: usize,
    /// The host tap's name.
    pub tap: String,
    /// Give the tap the node's addresses and routes (a real node). Off for the parity level, where the
    /// test plays the host stack on the tap.
    pub host_addresses: bool,
    pub xsk: XskConfig,
    /// Conntrack entries per worker; `None`: the node's `bpfMapSizeConntrack` shared evenly by the workers.
    pub flow_capacity: Option<usize>,
    /// Write the Log rules' lines to stderr (kernel LOG format, rate-limited as Felix configures).
    pub log_rules: bool,
    /// The network namespace the node's interfaces are in, when it is not the calling thread's (tests and
    /// the demo start the node from a thread inside it; later attachments must happen there too).
    pub netns: Option<String>,
}

impl Default for LiveOptions {
    fn default() -> LiveOptions {
        LiveOptions {
            workers: 1,
            tap: "calxdp-host".into(),
            host_addresses: true,
            xsk: XskConfig::default(),
            flow_capacity: None,
            log_rules: true,
            netns: None,
        }
    }
}

/// An interface the node has taken over.
#[derive(Debug)]
struct Attached {
    id: PortId,
    ifindex: u32,
    /// Held so the program stays attached; dropped (detached) after the workers gave the sockets back.
    redirect: Redirect,
}

/// What happened to a port, for the operator's log and Felix's status updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortEvent {
    Up { interface: String, mode: &'static str },
    Down { interface: String, why: String },
    Failed { interface: String, error: String },
}

/// A port as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortState {
    pub name: String,
    pub id: PortId,
    pub up: bool,
    pub state: String,
}

/// A running node.
#[derive(Debug)]
pub struct LiveNode {
    pub publisher: TablePublisher,
    pub clock: Arc<Clock>,
    /// The node as it is now (workloads come and go).
    pub node: NodeConfig,
    opts: LiveOptions,
    /// Conntrack entries each worker holds.
    per_worker: usize,
    shared: Vec<Arc<WorkerShared>>,
    threads: Vec<JoinHandle<()>>,
    commands: Vec<Sender<WorkerCommand>>,
    /// Every worker's last words, if it stopped on its own (a panic).
    deaths: Arc<Mutex<Vec<String>>>,
    attached: BTreeMap<String, Attached>,
    /// Interfaces that failed to attach, and when to try again.
    failed: BTreeMap<String, Instant>,
    pub attach_modes: Vec<(String, &'static str)>,
    /// Port changes since the last `take_events`.
    events: Vec<PortEvent>,
    /// Locks on the uplinks and the tap, held while the node runs (a second instance is refused).
    _locks: Vec<netns::HeldLock>,
    pub log_writer: Option<Arc<WriterState>>,
    _log_thread: Option<JoinHandle<()>>,
    stopping: bool,
    /// Policy and node updates rejected whole (bad input; the running tables stay), counted by the driver
    /// that read them (`calxdp run`'s reloads) for the operator.
    pub rejected_updates: u64,
}

impl LiveNode {
    /// Checks the machine, takes over the interfaces and starts the workers. Errors are sentences for an
    /// operator: what is missing and what to do. A pod whose veth does not exist yet is attached when it
    /// appears; a missing uplink is an error.
    pub fn start(
        mut node: NodeConfig,
        resources: ResourceSet,
        opts: &LiveOptions,
        trace: Option<SyncSender<TraceRecord>>,
    ) -> Result<LiveNode, StartError> {
        preflight(&node, opts)?;
        // Before anything on the host is touched: another calxdp on these interfaces refuses this one.
        let locks = lock_interfaces(&node, opts)?;
        for u in &mut node.uplinks {
            if u.mac.is_none() {
                u.mac = interface_mac(&u.name);
            }
        }
        let publisher = TablePublisher::new(node.clone(), resources);
        // Conntrack capacity as configured at the start: the node's, or a FelixConfiguration's over it (a
        // table cannot be resized while it runs).
        let per_worker = {
            let felix = publisher.slot().hold().world.node.felix.clone();
            flow_capacity(&NodeConfig { felix, ..node.clone() }, opts)
        };
        let clock = Arc::new(Clock::default());
        let uplinks = node.uplinks.len();

        // The host tap: one queue per worker.
        let mut taps = Vec::new();
        for _ in 0..opts.workers {
            let tap =
                Tap::open(&opts.tap, opts.workers > 1).map_err(|e| StartError::Tap(Tap::open_error(&opts.tap, &e)))?;
            taps.push(tap);
        }
        configure_tap(&node, opts)?;

        let (log_queue, log_writer, log_thread) = if opts.log_rules {
            let (tx, state, handle) = log::spawn_writer(std::io::stderr(), LOG_QUEUE).map_err(StartError::LogWriter)?;
            (Some(tx), Some(state), Some(handle))
        } else {
            (None, None, None)
        };

        // Handoff links between every ordered pair of workers: a frame goes to the worker owning its flow.
        let n = opts.workers;
        let mut outs: Vec<Vec<Option<HandoffSender>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut ins: Vec<Vec<HandoffReceiver>> = (0..n).map(|_| Vec::new()).collect();
        for (from, out) in outs.iter_mut().enumerate() {
            for (to, inn) in ins.iter_mut().enumerate() {
                if from != to {
                    let (tx, rx) = handoff::link(HANDOFF_SLOTS);
                    out[to] = Some(tx);
                    inn.push(rx);
                }
            }
        }
        let neighbours = Arc::new(Neighbours::with_capacity(4096));
        let deaths = Arc::new(Mutex::new(Vec::new()));
        let mut shared = Vec::new();
        let mut threads = Vec::new();
        let mut commands = Vec::new();
        for (i, ((out, inn), tap)) in outs.into_iter().zip(ins).zip(taps).enumerate() {
            let s = Arc::new(WorkerShared::default());
            let pipeline = Pipeline::new(publisher.slot(), per_worker);
            // Uplinks are attached below like every port; the host tap is this worker's from the start.
            let mut ports: Vec<Option<PortIo>> = (0..uplinks).map(|_| None).collect();
            ports.push(Some(PortIo::Tap(tap)));
            let logs = log_queue.clone().map(|queue| LogOutput { queue });
            let mut worker = Worker::new(pipeline, ports, uplinks, s.clone(), clock.clone(), trace.clone(), logs);
            worker.join(i, n, out, inn, neighbours.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            worker.listen(rx);
            commands.push(tx);
            let deaths = deaths.clone();
            let handle = std::thread::Builder::new()
                .name(format!("calxdp-worker-{i}"))
                .spawn(move || {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
                    if let Err(panic) = run {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        if let Ok(mut d) = deaths.lock() {
                            d.push(format!("worker {i} stopped: {why}"));
                        }
                    }
                })
                .map_err(|e| StartError::WorkerThread(i, e))?;
            shared.push(s);
            threads.push(handle);
        }
        drop(log_queue);
        let mut live = LiveNode {
            publisher,
            clock,
            node,
            opts: opts.clone(),
            per_worker,
            shared,
            threads,
            commands,
            deaths,
            attached: BTreeMap::new(),
            failed: BTreeMap::new(),
            attach_modes: Vec::new(),
            events: Vec::new(),
            _locks: locks,
            log_writer,
            _log_thread: log_thread,
            stopping: false,
            rejected_updates: 0,
        };
        live.supervise();
        // Uplinks must be there from the start (preflight checked they exist): a failure is fatal.
        for u in live.node.uplinks.clone() {
            if !live.attached.contains_key(&u.name) {
                let why = live
                    .events
                    .iter()
                    .find_map(|e| match e {
                        PortEvent::Failed { interface, error } if *interface == u.name => Some(error.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("interface {} could not be taken over", u.name));
                return Err(StartError::Uplink(why));
            }
        }
        Ok(live)
    }

    /// Runs `f` where the node's interfaces are: in its namespace, or on this thread.
    fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        match &self.opts.netns {
            None => Ok(f()),
            Some(ns) => netns::run_in(ns, f).map_err(|e| format!("namespace {ns}: {e}")),
        }
    }

    /// The interfaces the node should have now: uplinks, then pods' veths, with their port ids.
    fn wanted(&mut self) -> Vec<(String, PortId)> {
        let mut out: Vec<(String, PortId)> =
            self.node.uplinks.iter().enumerate().map(|(u, up)| (up.name.clone(), u as PortId)).collect();
        for w in &self.node.workloads {
            if let Some(i) = &w.interface {
                out.push((i.clone(), self.publisher.ports.id(i)));
            }
        }
        out
    }

    /// Brings the attached ports in line with the node and the interfaces that exist: attaches what is
    /// wanted and present, detaches what went away (or is no longer wanted), re-attaches an interface made
    /// again under the same name. Cheap when nothing changed (one `if_nametoindex` per interface).
    pub fn supervise(&mut self) {
        if self.stopping {
            return;
        }
        let wanted = self.wanted();
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        let indexes =
            self.in_netns(move || names.iter().map(|n| netns::ifindex(n)).collect::<Vec<_>>()).unwrap_or_default();
        for ((name, id), index) in wanted.iter().zip(indexes) {
            match (self.attached.get(name).map(|a| a.ifindex), index) {
                (None, Some(ix)) => {
                    if self.failed.get(name).is_some_and(|at| at.elapsed() < RETRY_ATTACH_AFTER) {
                        continue;
                    }
                    self.attach(name, *id, ix);
                }
                (Some(_), None) => self.detach(name, "the interface went away"),
                (Some(old), Some(ix)) if old != ix => {
                    self.detach(name, "the interface was made again");
                    self.attach(name, *id, ix);
                }
                _ => {}
            }
        }
        let unwanted: Vec<String> =
            self.attached.keys().filter(|n| !wanted.iter().any(|(w, _)| w == *n)).cloned().collect();
        for name in unwanted {
            self.detach(&name, "its workload was removed");
            self.publisher.ports.release(&name);
        }
    }

    /// Takes over `name` as port `id`: the XDP program, then one socket per worker queue, handed to the
    /// workers.
    fn attach(&mut self, name: &str, id: PortId, ifindex: u32) {
        let (workers, xsk, iface) = (self.opts.workers, self.opts.xsk, name.to_string());
        let made = self.in_netns(move || -> Result<(Redirect, Vec<XskSocket>), String> {
            let link = link_info(&iface).ok_or_else(|| format!("interface {iface} went away while attaching"))?;
            if link.rx_queues.min(link.tx_queues) < workers {
                return Err(format!(
                    "interface {iface} has {} receive and {} transmit queue(s) but {workers} workers run; each \
                     worker owns one queue of every interface",
                    link.rx_queues, link.tx_queues
                ));
            }
            let limit = xsk.frame_size as usize - XskConfig::HEADROOM;
            if link.mtu as usize + 18 > limit {
                return Err(format!(
                    "interface {iface} has MTU {} but calxdp's frames hold {limit} bytes (MTU {} at most): \
                     lower the MTU (ip link set {iface} mtu {}) or run with larger frames",
                    link.mtu,
                    limit - 18,
                    limit - 18
                ));
            }
            let mut redirect = Redirect::attach(&iface).map_err(|e| e.to_string())?;
            let mut sockets = Vec::new();
            for q in 0..workers {
                let sock = XskSocket::open(&iface, q as u32, xsk).map_err(|e| e.to_string())?;
                redirect.register(q as u32, sock.fd()).map_err(|e| e.to_string())?;
                sockets.push(sock);
            }
            Ok((redirect, sockets))
        });
        match made.and_then(|r| r) {
            Ok((redirect, sockets)) => {
                for (tx, sock) in self.commands.iter().zip(sockets) {
                    let _ = tx.send(WorkerCommand::Attach { id, io: PortIo::Xsk(Box::new(sock)) });
                }
                self.attach_modes.retain(|(i, _)| i != name);
                self.attach_modes.push((name.to_string(), redirect.mode));
                self.events.push(PortEvent::Up { interface: name.to_string(), mode: redirect.mode });
                self.attached.insert(name.to_string(), Attached { id, ifindex, redirect });
                self.failed.remove(name);
            }
            Err(error) => {
                self.events.push(PortEvent::Failed { interface: name.to_string(), error });
                self.failed.insert(name.to_string(), Instant::now());
            }
        }
    }

    /// Gives `name` up: every worker hands its socket back (frames held for it are dropped, counted), then
    /// the sockets close and the XDP program detaches, here on the control thread.
    fn detach(&mut self, name: &str, why: &str) {
        let Some(a) = self.attached.remove(name) else { return };
        let mut back = Vec::new();
        for tx in &self.commands {
            let (done, wait) = sync_channel(1);
            if tx.send(WorkerCommand::Detach { id: a.id, done }).is_ok() {
                back.push(wait);
            }
        }
        for wait in back {
            // A dead worker never answers; its socket closes with the process.
            drop(wait.recv_timeout(DETACH_WITHIN));
        }
        drop(a.redirect);
        self.attach_modes.retain(|(i, _)| i != name);
        self.events.push(PortEvent::Down { interface: name.to_string(), why: why.to_string() });
    }

    /// Puts a changed node in force: the tables first (with the flushes of addresses that went away), then
    /// the ports (new pods attached if their veth exists, removed ones detached).
    pub fn set_node(&mut self, node: NodeConfig) -> Result<(), Rejected> {
        let mut node = node;
        for (u, old) in node.uplinks.iter_mut().zip(&self.node.uplinks) {
            if u.mac.is_none() {
                u.mac = old.mac;
            }
        }
        self.publisher.set_node(node.clone())?;
        self.node = node;
        self.supervise();
        Ok(())
    }

    /// Every port the node wants now, with its state: taken over (and how), waiting for its interface, or
    /// failed (retried).
    pub fn port_states(&mut self) -> Vec<PortState> {
        let mut out = Vec::new();
        for (name, id) in self.wanted() {
            let state = match self.attached.get(&name) {
                Some(a) => format!("up (XDP {})", a.redirect.mode),
                None if self.failed.contains_key(&name) => "failed (retried every 5 s)".to_string(),
                None => "waiting for its interface".to_string(),
            };
            let up = self.attached.contains_key(&name);
            out.push(PortState { name, id, up, state });
        }
        let host = self.node.uplinks.len() as PortId;
        out.push(PortState { name: format!("host (tap {})", self.opts.tap), id: host, up: true, state: "up".into() });
        out
    }

    /// What the admin API needs of each worker: its command channel (answered between rounds) and its
    /// published counters.
    pub fn worker_links(&self) -> Vec<(Sender<WorkerCommand>, Arc<WorkerShared>)> {
        self.commands.iter().cloned().zip(self.shared.iter().cloned()).collect()
    }

    /// [`TablePublisher::patch`], then the ports when the workloads changed (new pods attached if their veth
    /// exists, removed ones detached). `false`, with nothing changed, when the change is more than a patch.
    pub fn patch(&mut self, patch: crate::publisher::Patch) -> Result<bool, Rejected> {
        let workloads_changed = patch.workloads.is_some();
        if self.publisher.patch(patch)?.is_none() {
            return Ok(false);
        }
        if workloads_changed {
            self.node.workloads = self.publisher.node().workloads.clone();
            self.supervise();
        }
        Ok(true)
    }

    /// [`LiveNode::set_node`] with a new resource set too, in one publication (the Felix driver).
    pub fn set_model(&mut self, node: NodeConfig, resources: ResourceSet) -> Result<(), Rejected> {
        let mut node = node;
        for (u, old) in node.uplinks.iter_mut().zip(&self.node.uplinks) {
            if u.mac.is_none() {
                u.mac = old.mac;
            }
        }
        self.publisher.set_model(node.clone(), resources)?;
        self.node = node;
        self.supervise();
        Ok(())
    }

    /// The port changes since the last call.
    pub fn take_events(&mut self) -> Vec<PortEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether the interface is taken over now.
    pub fn is_attached(&self, name: &str) -> bool {
        self.attached.contains_key(name)
    }

    /// A worker that stopped on its own (it panicked): the node cannot go on without it.
    pub fn dead_worker(&self) -> Option<String> {
        if let Ok(d) = self.deaths.lock() {
            if let Some(first) = d.first() {
                return Some(first.clone());
            }
        }
        if self.stopping {
            return None;
        }
        self.threads.iter().position(|t| t.is_finished()).map(|i| format!("worker {i} stopped"))
    }

    /// Every worker's counters, summed, and the conntrack figures.
    pub fn counters(&self) -> (Counters, IoCounters) {
        let (c, io, _, _) = self.stats();
        (c, io)
    }

    /// Counters, I/O counters, conntrack statistics and live conntrack entries, summed over the workers.
    pub fn stats(&self) -> (Counters, IoCounters, FlowStats, usize) {
        let mut c = Counters::default();
        let mut io = IoCounters::default();
        let mut flows = FlowStats::default();
        let mut entries = 0;
        for s in &self.shared {
            let g = match s.snapshot.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            c.add(&g.pipeline);
            io.add(&g.io);
            flows.created += g.flows.created;
            flows.expired += g.flows.expired;
            flows.early_dropped += g.flows.early_dropped;
            flows.refused += g.flows.refused;
            flows.flushed += g.flows.flushed;
            flows.peak += g.flows.peak;
            entries += g.entries;
        }
        (c, io, flows, entries)
    }

    /// Conntrack entries the node holds in all.
    pub fn flow_capacity(&self) -> usize {
        self.per_worker * self.opts.workers
    }

    /// Raises every worker's stop flag and waits for them (their last counters are published on the way out).
    fn halt(&mut self) {
        self.stopping = true;
        for s in &self.shared {
            s.stop.store(true, Ordering::Relaxed);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Frames the workers have finished.
    pub fn frames_done(&self) -> u64 {
        self.shared.iter().map(|s| s.frames_done.load(Ordering::Acquire)).sum()
    }

    /// Stops the workers, then detaches XDP and removes the tap (with its addresses and routes).
    pub fn stop(self) -> (Counters, IoCounters) {
        let (c, io, _, _) = self.stop_with_stats();
        (c, io)
    }

    /// [`LiveNode::stop`], with the workers' last conntrack statistics and entries.
    pub fn stop_with_stats(mut self) -> (Counters, IoCounters, FlowStats, usize) {
        self.halt();
        let stats = self.stats();
        self.attached.clear();
        stats
    }
}

impl Drop for LiveNode {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Why the node could not start: what is missing and what to do, a sentence for an operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--workers must be at least 1")]
    NoWorkers,
    #[error(
        "the node dataplane needs root (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF): it attaches XDP programs, opens \
         AF_XDP sockets and creates a tap"
    )]
    NotRoot,
    #[error("interface {0} (uplink) does not exist in this network namespace; create it or fix the node file")]
    NoUplink(String),
    #[error(
        "interface {name} has {rx} receive and {tx} transmit queue(s) but {workers} workers were asked for; each \
         worker owns one queue of every interface"
    )]
    FewQueues { name: String, rx: usize, tx: usize, workers: usize },
    #[error("/dev/net/tun is missing: load the tun module (modprobe tun) so calxdp can make the host tap")]
    NoTun,
    /// Bytes the UMEMs need and bytes `ulimit -l` allows.
    #[error(
        "memlock limit too low: the AF_XDP UMEMs need {} KiB of locked memory but `ulimit -l` allows {} KiB; run \
         as root (CAP_IPC_LOCK) or raise the limit",
        .need / 1024,
        .limit / 1024
    )]
    Memlock { need: usize, limit: u64 },
    #[error("cannot create {LOCK_DIR}: {0}")]
    LockDir(std::io::Error),
    #[error("cannot read this thread's network namespace: {0}")]
    Netns(std::io::Error),
    #[error(
        "another calxdp already runs on {name} ({what}) in this network namespace (lock {}); stop it first — \
         nothing was changed",
        .path.display()
    )]
    Locked { name: String, what: &'static str, path: std::path::PathBuf },
    #[error("cannot lock {}: {error}", .path.display())]
    Lock { path: std::path::PathBuf, error: std::io::Error },
    /// The tap could not be opened: the sentence names what holds it or what is missing.
    #[error("{0}")]
    Tap(String),
    /// Configuring the host tap (or reading an uplink) failed: the error names the request and interface.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot start the log writer: {0}")]
    LogWriter(std::io::Error),
    #[error("cannot start worker thread {0}: {1}")]
    WorkerThread(usize, std::io::Error),
    /// An uplink was not taken over: the attach's own sentence (as its port event says it).
    #[error("{0}")]
    Uplink(String),
}

/// Where the interface locks live.
const LOCK_DIR: &str = "/run/calxdp";

/// Takes a lock per uplink and on the tap's name, in this network namespace: a second `calxdp run` (or a
/// demo) on the same interfaces is refused with a sentence before it changes a route, an address or a link.
fn lock_interfaces(node: &NodeConfig, opts: &LiveOptions) -> Result<Vec<netns::HeldLock>, StartError> {
    std::fs::create_dir_all(LOCK_DIR).map_err(StartError::LockDir)?;
    // Locks left by killed processes (a clean exit removes its own): the directory stays as small as the
    // number of running nodes' interfaces.
    netns::sweep_locks(std::path::Path::new(LOCK_DIR));
    let ns = netns::current_netns_id().map_err(StartError::Netns)?;
    let mut locks = Vec::new();
    let names = node.uplinks.iter().map(|u| (u.name.as_str(), "uplink")).chain([(opts.tap.as_str(), "host tap")]);
    for (name, what) in names {
        let path = std::path::Path::new(LOCK_DIR).join(format!("net{ns}-{name}.lock"));
        match netns::try_lock(&path) {
            Ok(Some(f)) => locks.push(f),
            Ok(None) => return Err(StartError::Locked { name: name.to_string(), what, path }),
            Err(e) => return Err(StartError::Lock { path, error: e }),
        }
    }
    Ok(locks)
}

/// Conntrack entries each worker holds: flows are owned by one worker each, so the node's capacity is
/// shared evenly.
pub fn flow_capacity(node: &NodeConfig, opts: &LiveOptions) -> usize {
    opts.flow_capacity.unwrap_or_else(|| node.felix.conntrack_capacity.div_ceil(opts.workers.max(1)))
}

/// Every interface the node takes over at the start: the uplinks, then each local pod's veth.
pub fn interfaces(node: &NodeConfig) -> Vec<(calxdp_dataplane::path::Port, String)> {
    use calxdp_dataplane::path::Port;
    let uplinks = node.uplinks.iter().enumerate().map(|(i, u)| (Port::Uplink(i as u16), u.name.clone()));
    let pods = node
        .workloads
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.interface.clone().map(|name| (Port::Workload(i as u16), name)));
    uplinks.chain(pods).collect()
}

/// Network namespaces made for a topology (the demo, the live parity level), deleted on drop, also when
/// the topology fails half-way.
#[derive(Debug, Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates namespace `name` with loopback up and IPv6 off by default, so no autoconfiguration chatter
    /// reaches the dataplane unasked.
    pub fn add(&mut self, name: &str) -> Result<(), IpError> {
        ip(&["netns", "add", name])?;
        self.0.push(name.to_string());
        netns::run_in(name, || {
            for f in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1");
            }
        })
        .map_err(|e| IpError::Enter(name.to_string(), e))?;
        ip(&["-n", name, "link", "set", "lo", "up"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Checks what the node needs before touching anything.
fn preflight(node: &NodeConfig, opts: &LiveOptions) -> Result<(), StartError> {
    if opts.workers == 0 {
        return Err(StartError::NoWorkers);
    }
    if !is_root() {
        return Err(StartError::NotRoot);
    }
    let mut rtnl = RouteSocket::open()?;
    for u in &node.uplinks {
        let link = match rtnl.link(&u.name) {
            Ok(link) => link,
            Err(NetlinkError::NoInterface(_)) => return Err(StartError::NoUplink(u.name.clone())),
            Err(e) => return Err(e.into()),
        };
        if link.rx_queues.min(link.tx_queues) < opts.workers {
            return Err(StartError::FewQueues {
                name: u.name.clone(),
                rx: link.rx_queues,
                tx: link.tx_queues,
                workers: opts.workers,
            });
        }
    }
    let names = interfaces(node);
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(StartError::NoTun);
    }
    let need = opts.xsk.umem_bytes() * names.len() * opts.workers;
    if !has_cap_ipc_lock() {
        let limit = calxdp_dataplane::sys::process::memlock_limit();
        if let Some(limit) = limit.filter(|&l| (l as usize) < need) {
            return Err(StartError::Memlock { need, limit });
        }
    }
    Ok(())
}

pub use calxdp_dataplane::sys::process::is_root;

/// Whether the effective capabilities hold CAP_IPC_LOCK (locking memory past `ulimit -l`). Read from
/// /proc: libc has no wrapper for capget(2), and the kernel's own text is its stable interface.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|c| c & (1 << CAP_IPC_LOCK) != 0)
}

pub use crate::netlink::{link_info, LinkInfo};

fn interface_mac(name: &str) -> Option<[u8; 6]> {
    link_info(name)?.mac
}

/// Why an `ip` command (or entering a namespace made with one) failed; the error names the command. `ip`
/// builds the topologies of the demo and the parity levels; the node itself uses [`crate::netlink`].
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("cannot run `ip` (install iproute2): {0}")]
    Spawn(std::io::Error),
    /// The arguments joined by spaces, and what `ip` wrote to stderr (trimmed).
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("entering namespace {0}: {1}")]
    Enter(String, std::io::Error),
}

/// Runs `ip` with the arguments; the error names the command.
pub fn ip(args: &[&str]) -> Result<(), IpError> {
    let out = Command::new("ip").args(args).output().map_err(IpError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IpError::Failed { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// The tap carries the uplink's MAC and MTU; on a real node also the node's addresses, its default route
/// and a /32 route to each local pod (so the host reaches pods through the dataplane, under policy). Set
/// through netlink, in the calling thread's network namespace (the tap's).
pub(crate) fn configure_tap(node: &NodeConfig, opts: &LiveOptions) -> Result<(), NetlinkError> {
    let tap = opts.tap.as_str();
    let mut rtnl = RouteSocket::open()?;
    // A node without uplinks (pods only) still has a host stack; its tap gets a fixed local MAC.
    let mac = node.uplinks.first().and_then(|u| u.mac).unwrap_or([0x02, 0xca, 0x1c, 0, 0, 1]);
    rtnl.set_mac(tap, mac)?;
    if let Some(link) = node.uplinks.first().and_then(|u| rtnl.link(&u.name).ok()) {
        rtnl.set_mtu(tap, link.mtu)?;
    }
    // IPv6 on the tap only where the node has IPv6 to route (the host reaches IPv6 pods through it);
    // otherwise the host stack would only put autoconfiguration chatter on the node's wire.
    let has_v6 = opts.host_addresses
        && (node.workloads.iter().flat_map(|w| &w.ips).any(IpAddr::is_ipv6)
            || node.uplinks.iter().flat_map(|u| &u.addrs).any(IpAddr::is_ipv6));
    let conf = format!("/proc/sys/net/ipv6/conf/{tap}");
    if has_v6 {
        let _ = std::fs::write(format!("{conf}/accept_dad"), "0");
        let _ = std::fs::write(format!("{conf}/router_solicitations"), "0");
    }
    let _ = std::fs::write(format!("{conf}/disable_ipv6"), if has_v6 { "0" } else { "1" });
    rtnl.set_up(tap)?;
    if !opts.host_addresses {
        return Ok(());
    }
    for u in &node.uplinks {
        for (net, addr) in u.ips.iter().zip(&u.addrs) {
            rtnl.replace_address(tap, *addr, net.prefix_len())?;
        }
    }
    for gw in node.uplinks.first().map(|u| u.gateways.clone()).unwrap_or_default() {
        let any = if gw.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        rtnl.replace_route(tap, any, 0, Some(gw))?;
    }
    for w in &node.workloads {
        if w.interface.is_none() {
            continue;
        }
        for a in &w.ips {
            let host = if a.is_ipv4() { 32 } else { 128 };
            rtnl.replace_route(tap, *a, host, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calxdp_policy::yaml::{parse_documents, Field, Origin};

    const NODE: &str = r#"
name: n1
interfaces:
  - {name: up0, ips: [10.77.0.10/24, "fd00:77::10/64"], gateway: [10.77.0.1, "fd00:77::1"]}
workloads:
  - {name: a, namespace: default, interface: cali-a, ips: [192.168.77.5, "fd00:1::5"]}
"#;

    /// `ip -n NS ARGS`' standard output.
    fn ip_out(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", ns]).args(args).output().expect("ip runs");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    #[ignore = "needs root (network namespaces): scripts/test runs it with --include-ignored as root"]
    fn the_tap_configuration_shows_in_ip() {
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(NODE, &origin).unwrap();
        let mut node = NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap();
        node.uplinks[0].mac = Some([2, 0x77, 0, 0, 0, 0x10]);
        // A pod whose veth is not known (yet): no route to it through the tap.
        let mut veth_unknown = node.workloads[0].clone();
        (veth_unknown.name, veth_unknown.interface, veth_unknown.ips) =
            ("b".into(), None, vec!["192.168.78.9".parse().unwrap()]);
        node.workloads.push(veth_unknown);
        let ns = format!("cxnl-tap-{}", std::process::id());
        let mut made = Namespaces::default();
        made.add(&ns).unwrap();
        // A veth plays the tap; the uplink's MTU is what the tap takes.
        ip(&["-n", &ns, "link", "add", "tap0", "type", "veth", "peer", "name", "up0"]).unwrap();
        ip(&["-n", &ns, "link", "set", "dev", "up0", "mtu", "1420", "up"]).unwrap();
        let opts = LiveOptions { tap: "tap0".into(), ..LiveOptions::default() };
        // Twice: a restarted node replaces what is there.
        for _ in 0..2 {
            let (n, o) = (node.clone(), opts.clone());
            netns::run_in(&ns, move || configure_tap(&n, &o)).unwrap().unwrap();
        }

        let link = ip_out(&ns, &["-o", "link", "show", "dev", "tap0"]);
        assert!(link.contains("mtu 1420 ") && link.contains("link/ether 02:77:00:00:00:10 "), "{link}");
        let flags = link.split(['<', '>']).nth(1).unwrap_or_default();
        assert!(flags.split(',').any(|f| f == "UP"), "{link}");
        let addrs = ip_out(&ns, &["-o", "addr", "show", "dev", "tap0"]);
        assert!(addrs.contains("inet 10.77.0.10/24 ") && addrs.contains("inet6 fd00:77::10/64 "), "{addrs}");
        let v4 = ip_out(&ns, &["-4", "route", "show"]);
        // As `ip route replace` makes them (its `proto boot` is what `ip route show` leaves out).
        for want in ["default via 10.77.0.1 dev tap0", "192.168.77.5 dev tap0 scope link"] {
            assert!(v4.lines().any(|l| l.trim() == want), "{want:?} not in\n{v4}");
        }
        let boot = ip_out(&ns, &["-4", "route", "show", "proto", "boot"]);
        assert_eq!(boot.lines().count(), 2, "{boot}");
        assert!(!v4.contains("192.168.78.9"), "a pod without a veth is not routed to the host tap\n{v4}");
        let v6 = ip_out(&ns, &["-6", "route", "show"]);
        for want in ["default via fd00:77::1 dev tap0", "fd00:1::5 dev tap0"] {
            assert!(v6.lines().any(|l| l.starts_with(want)), "{want:?} not in\n{v6}");
        }

        // Without host addresses (the parity level): MAC, MTU and up only.
        let bare = LiveOptions { host_addresses: false, tap: "up0".into(), ..LiveOptions::default() };
        let n = node.clone();
        netns::run_in(&ns, move || configure_tap(&n, &bare)).unwrap().unwrap();
        assert!(ip_out(&ns, &["-o", "addr", "show", "dev", "up0"]).lines().all(|l| !l.contains(" inet ")));

        let missing = LiveOptions { tap: "nosuch".into(), ..LiveOptions::default() };
        let err = netns::run_in(&ns, move || configure_tap(&node, &missing)).unwrap().unwrap_err();
        assert_eq!(err.to_string(), "interface nosuch does not exist");
    }
}
