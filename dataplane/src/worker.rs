//! A poll-mode worker: owns one queue of every port (an AF_XDP socket per uplink and pod veth, a queue of
//! the host tap, or in-memory queues offline), pulls batches of frames, runs them through the [`Pipeline`],
//! rewrites the allowed ones and sends them out of their port. ARP and neighbour discovery are answered or
//! passed here, before the pipeline (DESIGN.md "The node").
//!
//! This is the one frame path: `calxdp run`, the demo, `replay`, the pipeline and live parity levels and the
//! benches all drive it, live with [`Worker::run`], offline one [`Worker::round`] at a time.
//!
//! Each batch is copied out of the receive UMEM into the worker's own buffers, and each frame that leaves
//! is copied into the UMEM of the port it leaves by: copy-mode AF_XDP on veth copies anyway, and this keeps
//! every socket's frame accounting private to it. Nothing on this path allocates (the trace and log paths
//! aside, which are off unless asked for, and rate-limited).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::verdict::Verdict;

use crate::arp::{self, Neighbours};
use crate::batch::{BATCH, FRAME_MAX};
use crate::decision::{Decision, DropReason};
use crate::flow::Nanos;
use crate::frames::{ingest, ingest_into, rewrite, time_exceeded};
use crate::log::{log_leader, log_line, MAX_LOGS};
use crate::ndp;
use crate::nexthop::{self, Due, Pending};
use crate::owner::{fragment_owner, owner};
use crate::path::{Port, PortMap, WORKLOAD_GATEWAY_MAC};
use crate::pipeline::{rule_ref, Counters, LogHit, Packet, Pipeline};
use crate::port_drops::{IoDrop, PortDrops};
use crate::ports::{send, PortId, PortIo};
use crate::reassembly::{Insert, MAX_FRAGMENTS};
use crate::sys::handoff::{HandoffReceiver, HandoffSender};
use crate::sys::ring::XdpDesc;
use crate::tables::TableSet;
use crate::wire::fragment::{fragment_of, write_fragment};
use crate::wire::Parsed;

/// Congested rounds in a row before the worker receives regardless (roughly 100 µs).
const MAX_CONGESTED_STREAK: u32 = 64;

/// In a handoff tag (the port id a frame arrived on): the frame is a fragment of a datagram already gathered
/// by another worker and sent to this one because it owns the datagram's flow, which it decides.
const FLOW_STEERED: u16 = 0x8000;

/// The link-local address of the host side of every pod veth (Calico: fe80::ecee:eeff:feee:eeee), from
/// which the dataplane solicits a pod.
pub const WORKLOAD_GATEWAY_LL: Ipv6Addr = calxdp_policy::reject::WORKLOAD_GATEWAY_LL;

/// The dataplane's clock: monotonic time since start, plus an offset a test may advance (a parity
/// scenario's `advance` step), so timeouts run without waiting. A manual clock does not move by itself.
#[derive(Debug)]
pub struct Clock {
    start: Option<Instant>,
    offset: AtomicU64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock { start: Some(Instant::now()), offset: AtomicU64::new(0) }
    }
}

impl Clock {
    /// A clock that only moves when advanced or set (offline runs: parity levels, replay).
    pub fn manual() -> Clock {
        Clock { start: None, offset: AtomicU64::new(0) }
    }

    pub fn now(&self) -> Nanos {
        self.start.map_or(0, |s| s.elapsed().as_nanos() as Nanos) + self.offset.load(Ordering::Relaxed)
    }

    pub fn advance(&self, by: Duration) {
        self.offset.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Sets a manual clock (a capture's timestamps).
    pub fn set(&self, now: Nanos) {
        self.offset.store(now, Ordering::Relaxed);
    }
}

/// What one frame met, for `--trace`, the offline levels and the live parity level ("why was this packet
/// dropped?").
#[derive(Clone, Copy, Debug)]
pub struct TraceRecord {
    /// The port it arrived on (stable id) and what that port was in the tables that decided it.
    pub in_port: PortId,
    pub port: Port,
    pub header: PacketHeader,
    pub verdict: Verdict,
    pub decision: Decision,
    pub out: Option<Port>,
    pub out_port: Option<PortId>,
    pub translated: Option<SocketAddr>,
    pub logs: [Option<LogHit>; MAX_LOGS],
    /// Whether conntrack holds an entry for the packet's flow after it.
    pub tracked: bool,
    pub epoch: u64,
    /// A dropped packet answered as Felix's Reject deny action answers (an ICMP port unreachable that left
    /// the node, or waits for its next hop).
    pub rejected: bool,
    /// The rule that decided each chain the frame crossed, in order (the last may be `decision`'s): every
    /// stage that had a say, not only the last.
    pub rule_hits: [Option<LogHit>; crate::pipeline::MAX_RULE_HITS],
}

/// Counters of the work around the pipeline (ARP, neighbours, transmit, ports), per worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub arp_replied: u64,
    /// Neighbour solicitations answered (pods asking for their gateway, the host asking for a pod).
    pub ndp_answered: u64,
    pub arp_passed: u64,
    /// ARP frames with nowhere to go (no tap, or from a port that does not pass ARP).
    pub arp_dropped: u64,
    /// Allowed frames lost because the output queue was full.
    pub tx_full: u64,
    /// Frames longer than the worker's buffers, dropped on receipt (never truncated).
    pub oversize: u64,
    pub batches: u64,
    /// Rounds spent only transmitting because an output port was congested.
    pub congested_rounds: u64,
    pub trace_lost: u64,
    /// Frames passed to the worker that owns their flow, and those dropped because its ring was full.
    pub handed_off: u64,
    pub handoff_full: u64,
    /// Allowed frames held until their next hop's MAC was known; those dropped because it never came (the
    /// next hop failed), because no resolution slot was free, or to make room for newer frames of the same
    /// next hop; the probes sent (ARP requests and neighbour solicitations).
    pub held: u64,
    pub no_neighbour: u64,
    pub arp_asked: u64,
    pub ndp_asked: u64,
    /// Log-rule lines queued for writing, and those lost because the writer fell behind (never blocking the
    /// worker). Hits over their rule's rate limit are the pipeline's `logs_suppressed`.
    pub log_lines: u64,
    pub log_dropped: u64,
    /// Denied packets answered with an ICMP port unreachable (Felix's Reject deny action; the answers the
    /// kernel's ICMP rate limits hold back are the pipeline's `reject_limited`).
    pub rejected: u64,
    /// Frames that arrived on, or were routed to, a port the tables do not know (being attached or
    /// detached): dropped.
    pub no_port: u64,
    /// Time spent in rounds that moved frames (the worker's busy time; idle polling and sleeps excluded).
    pub busy_nanos: u64,
    /// The kernel's counters of frames it could not put in the worker's AF_XDP receive rings
    /// (`XDP_STATISTICS`, summed over its sockets, read when the counters are published and when a socket
    /// is detached), as the kernel keeps them: `rx_fill_ring_empty_descs` (the fill ring had no free UMEM
    /// frame), `rx_ring_full` (the receive ring had no room), and `rx_dropped` (no UMEM frame to copy into,
    /// which the fill-ring count also saw, or a frame too big for one; ring-full drops are not in it).
    /// Every frame dropped in front of the rings is in [`IoCounters::xsk_dropped`].
    pub xsk_fill_empty: u64,
    pub xsk_rx_ring_full: u64,
    pub xsk_rx_dropped: u64,
    /// Frames received and sent, by port id.
    pub rx: Vec<u64>,
    pub tx: Vec<u64>,
}

impl IoCounters {
    /// Every frame the kernel dropped in front of the AF_XDP receive rings: `rx_dropped` and `rx_ring_full`
    /// (net/xdp/xsk.c counts a drop in one of the two).
    pub fn xsk_dropped(&self) -> u64 {
        self.xsk_rx_dropped + self.xsk_rx_ring_full
    }

    /// Makes port `id`'s rx and tx counters, zeroed (the worker starts using the port; see `port_drops.rs`
    /// for why a port starts from zero).
    pub fn open(&mut self, id: PortId) {
        let i = id as usize;
        for v in [&mut self.rx, &mut self.tx] {
            if v.len() <= i {
                v.resize(i + 1, 0);
            }
            v[i] = 0;
        }
    }

    /// Adds another worker's counters.
    pub fn add(&mut self, o: &IoCounters) {
        let IoCounters {
            arp_replied,
            ndp_answered,
            arp_passed,
            arp_dropped,
            tx_full,
            oversize,
            batches,
            congested_rounds,
            trace_lost,
            handed_off,
            handoff_full,
            held,
            no_neighbour,
            arp_asked,
            ndp_asked,
            log_lines,
            log_dropped,
            rejected,
            no_port,
            busy_nanos,
            xsk_fill_empty,
            xsk_rx_ring_full,
            xsk_rx_dropped,
            rx,
            tx,
        } = o;
        // Destructured, so a counter added to the struct cannot be forgotten here.
        self.arp_replied += arp_replied;
        self.ndp_answered += ndp_answered;
        self.arp_passed += arp_passed;
        self.arp_dropped += arp_dropped;
        self.tx_full += tx_full;
        self.oversize += oversize;
        self.batches += batches;
        self.congested_rounds += congested_rounds;
        self.trace_lost += trace_lost;
        self.handed_off += handed_off;
        self.handoff_full += handoff_full;
        self.held += held;
        self.no_neighbour += no_neighbour;
        self.arp_asked += arp_asked;
        self.ndp_asked += ndp_asked;
        self.log_lines += log_lines;
        self.log_dropped += log_dropped;
        self.rejected += rejected;
        self.no_port += no_port;
        self.busy_nanos += busy_nanos;
        self.xsk_fill_empty += xsk_fill_empty;
        self.xsk_rx_ring_full += xsk_rx_ring_full;
        self.xsk_rx_dropped += xsk_rx_dropped;
        for (mine, theirs) in [(&mut self.rx, rx), (&mut self.tx, tx)] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }
}

/// What a worker shares with the control thread: its stop flag and a snapshot of its counters.
#[derive(Debug, Default)]
pub struct WorkerShared {
    pub stop: AtomicBool,
    /// Frames this worker has finished (decided and sent or dropped); read by tests to know a frame is done.
    pub frames_done: AtomicU64,
    /// The counters as of the last publication (about every 100 ms; only `try_lock`ed by the worker).
    pub snapshot: Mutex<WorkerCounters>,
}

/// A worker's counters as it publishes them.
#[derive(Clone, Debug, Default)]
pub struct WorkerCounters {
    pub pipeline: Counters,
    pub io: IoCounters,
    /// Drops by the port they arrived on and reason (the pipeline's and the worker's).
    pub port_drops: PortDrops,
    pub flows: crate::flow::FlowStats,
    /// Conntrack entries held.
    pub entries: usize,
}

impl WorkerCounters {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &WorkerCounters) {
        self.pipeline.add(&o.pipeline);
        self.io.add(&o.io);
        self.port_drops.add(&o.port_drops);
        let f = &o.flows;
        self.flows.created += f.created;
        self.flows.expired += f.expired;
        self.flows.early_dropped += f.early_dropped;
        self.flows.refused += f.refused;
        self.flows.flushed += f.flushed;
        self.flows.peak += f.peak;
        self.entries += o.entries;
    }
}

/// What the control thread asks of a running worker, between rounds.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Start using `io` as port `id` (an interface was attached).
    Attach { id: PortId, io: PortIo },
    /// Stop using port `id` (its interface goes away) and hand its queue back for closing off the hot path.
    Detach { id: PortId, done: SyncSender<Option<PortIo>> },
    // The operator's questions (the admin API), answered between two rounds so that reading state never
    // takes a lock a worker could wait on. The worker copies what is asked into the reply and goes on; a
    // reply nobody waits for any more is dropped.
    /// Every conntrack entry `filter` accepts, at most `limit` of them.
    Flows { filter: FlowFilter, limit: usize, reply: SyncSender<Vec<crate::flow::FlowView>> },
    /// Removes every conntrack entry `filter` accepts; replies how many.
    FlushFlows { filter: FlowFilter, reply: SyncSender<usize> },
    /// A copy of the rule hit counters.
    RuleHits { reply: SyncSender<crate::pipeline::RuleHits> },
    /// Sends a trace record of each of the next `count` frames this worker decides to `to` (besides any
    /// `--trace` output); stops early when `to` is closed. A count of 0 stops tracing.
    Trace { count: u32, to: SyncSender<TraceRecord> },
}

/// Which conntrack entries an operator means, by the original direction's addresses and protocol (as
/// `conntrack -L -s/-d/-p` match). Empty fields match everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub protocol: Option<u8>,
}

impl FlowFilter {
    /// Whether `f` is one of the entries meant.
    pub fn accepts(&self, f: &crate::flow::FlowView) -> bool {
        self.src.is_none_or(|s| f.original.src == s)
            && self.dst.is_none_or(|d| f.original.dst == d)
            && self.protocol.is_none_or(|p| f.original.protocol.0 == p)
    }
}

/// Where the Log rules' lines go (their rate limits are applied in the pipeline): a bounded queue to a
/// writer thread, so a slow or broken log reader can never block or stop the worker (`log::spawn_writer`).
#[derive(Debug, Clone)]
pub struct LogOutput {
    pub queue: SyncSender<String>,
}

/// A worker and everything it owns.
#[derive(Debug)]
pub struct Worker {
    pub pipeline: Pipeline,
    /// By port id: uplinks, the host, then pods as attached.
    ports: Vec<Option<PortIo>>,
    uplinks: usize,
    bufs: Vec<[u8; FRAME_MAX]>,
    lens: [usize; BATCH],
    /// The port id each buffered frame arrived on.
    in_ids: [PortId; BATCH],
    tags: [u16; BATCH],
    /// This worker's index, and the links to and from the other workers (by worker index; `None` for
    /// itself). Flows are owned by one worker each (`owner.rs`).
    id: usize,
    workers: usize,
    handoff_out: Vec<Option<HandoffSender>>,
    handoff_in: Vec<HandoffReceiver>,
    batch: Vec<Packet>,
    parsed: Vec<Option<Parsed>>,
    /// For each packet of the batch, the buffer its frame is in (for a reassembled datagram: the buffer of
    /// the fragment that completed it, free for the fragments it leaves as), and the reassembly slot of a
    /// reassembled datagram.
    frame_of: Vec<usize>,
    datagram_of: Vec<Option<usize>>,
    /// Frames handed over as fragments of a datagram whose flow this worker owns ([`FLOW_STEERED`]).
    flow_steered: [bool; BATCH],
    descs: [XdpDesc; BATCH],
    addrs: [u64; BATCH],
    scratch: [u8; FRAME_MAX],
    /// Neighbour and pod MACs, shared with the other workers.
    neighbours: Arc<Neighbours>,
    /// Frames waiting for their next hop's MAC, and the next hops being asked for.
    pending: Pending,
    pub io: IoCounters,
    logs: Option<LogOutput>,
    shared: Arc<WorkerShared>,
    clock: Arc<Clock>,
    trace: Option<SyncSender<TraceRecord>>,
    commands: Option<Receiver<WorkerCommand>>,
    /// An operator's `calxdp trace`: where to send records, and how many more frames to trace.
    asked_trace: Option<(SyncSender<TraceRecord>, u32)>,
    congested_streak: u32,
    /// Each port's socket drop counters as last read (`IoCounters::xsk_*` add what they grew by).
    xsk_seen: Vec<[u64; 3]>,
}

impl Worker {
    /// A worker over `ports` (indexed by port id: the uplinks, then the host; pods are attached later or
    /// included after the host). `logs`: where the Log rules' lines go (`None`: no lines; the trace still
    /// records the hits).
    pub fn new(
        pipeline: Pipeline,
        ports: Vec<Option<PortIo>>,
        uplinks: usize,
        shared: Arc<WorkerShared>,
        clock: Arc<Clock>,
        trace: Option<SyncSender<TraceRecord>>,
        logs: Option<LogOutput>,
    ) -> Worker {
        assert!(ports.len() > uplinks, "one port per uplink, then the host");
        let mut pipeline = pipeline;
        pipeline.note_tracked = trace.is_some();
        let mut io = IoCounters::default();
        for id in 0..ports.len() {
            pipeline.port_drops.open(id as PortId);
            io.open(id as PortId);
        }
        // A row for every port given here (a socket among them counts from zero, as an attached one does).
        let xsk_seen = vec![[0; 3]; ports.len()];
        Worker {
            pipeline,
            ports,
            uplinks,
            bufs: vec![[0; FRAME_MAX]; BATCH],
            lens: [0; BATCH],
            in_ids: [0; BATCH],
            tags: [0; BATCH],
            id: 0,
            workers: 1,
            handoff_out: Vec::new(),
            handoff_in: Vec::new(),
            batch: vec![Packet::EMPTY; BATCH],
            parsed: vec![None; BATCH],
            frame_of: Vec::with_capacity(BATCH),
            datagram_of: Vec::with_capacity(BATCH),
            flow_steered: [false; BATCH],
            descs: [XdpDesc::default(); BATCH],
            addrs: [0; BATCH],
            scratch: [0; FRAME_MAX],
            neighbours: Arc::new(Neighbours::with_capacity(1024)),
            pending: Pending::default(),
            io,
            logs,
            shared,
            clock,
            trace,
            commands: None,
            asked_trace: None,
            congested_streak: 0,
            xsk_seen,
        }
    }

    /// Makes this worker number `id` of `workers`, with links to the others (`out[j]`: to worker j).
    pub fn join(
        &mut self,
        id: usize,
        workers: usize,
        out: Vec<Option<HandoffSender>>,
        inn: Vec<HandoffReceiver>,
        neighbours: Arc<Neighbours>,
    ) {
        self.neighbours = neighbours;
        self.id = id;
        self.workers = workers;
        self.handoff_out = out;
        self.handoff_in = inn;
    }

    /// Where the control thread's attach and detach requests come from.
    pub fn listen(&mut self, commands: Receiver<WorkerCommand>) {
        self.commands = Some(commands);
    }

    /// The port id of the host tap.
    pub fn host_port(&self) -> PortId {
        self.uplinks as PortId
    }

    /// Starts using `io` as port `id`. Its counters start from zero (an id may have been another
    /// interface's: `port_drops.rs`); their rows are made here, between rounds, so counting never allocates.
    pub fn attach(&mut self, id: PortId, io: PortIo) {
        let i = id as usize;
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, || None);
        }
        self.ports[i] = Some(io);
        if self.xsk_seen.len() <= i {
            self.xsk_seen.resize(i + 1, [0; 3]);
        }
        // A newly attached socket counts from zero.
        self.xsk_seen[i] = [0; 3];
        self.io.open(id);
        self.pipeline.port_drops.open(id);
    }

    /// Stops using port `id`: frames held for it are dropped (counted), its queue is handed back.
    pub fn detach(&mut self, id: PortId) -> Option<PortIo> {
        // What its socket's kernel counters grew by since the last publication is read while the socket is
        // still ours: after the detach nobody reads it again.
        self.read_socket_drops_of(id as usize);
        let (io, drops) = (&mut self.io, &mut self.pipeline.port_drops);
        self.pending.forget_port(id, &mut |from| count_drop(io, drops, from, IoDrop::NoNeighbour));
        self.ports.get_mut(id as usize).and_then(Option::take)
    }

    /// Counts one frame from port `id` dropped around the pipeline for `d`.
    fn dropped(&mut self, id: PortId, d: IoDrop) {
        count_drop(&mut self.io, &mut self.pipeline.port_drops, id, d);
    }

    /// The in-memory port `id`, if it is one (offline drivers push frames in and take frames out).
    pub fn memory_port(&mut self, id: PortId) -> Option<&mut crate::ports::MemoryPort> {
        match self.ports.get_mut(id as usize) {
            Some(Some(PortIo::Memory(m))) => Some(m),
            _ => None,
        }
    }

    /// Whether frames are waiting for a next hop.
    pub fn has_held_frames(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Polls until the stop flag is raised. Spins while there is traffic; backs off to yields and then
    /// short sleeps when idle, so an idle node does not burn its cores.
    pub fn run(&mut self) {
        let mut idle_rounds = 0u32;
        let mut last_publish = Instant::now();
        let mut round_start = last_publish;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let moved = self.round();
            // One clock read per round, for the busy time and the publication both.
            let now = Instant::now();
            if moved > 0 {
                self.io.busy_nanos += now.duration_since(round_start).as_nanos() as u64;
            }
            round_start = now;
            if moved == 0 {
                idle_rounds = idle_rounds.saturating_add(1);
                if idle_rounds > 20_000 {
                    std::thread::sleep(Duration::from_micros(200));
                    round_start = Instant::now();
                } else if idle_rounds > 200 {
                    std::thread::yield_now();
                    round_start = Instant::now();
                }
            } else {
                idle_rounds = 0;
            }
            if now.duration_since(last_publish) > Duration::from_millis(100) {
                self.publish();
                last_publish = now;
            }
        }
        self.flush();
        self.publish();
    }

    /// One round: the control thread's requests, the flow table's upkeep, a batch from every port and every
    /// other worker, the next hops being resolved, and transmission. Returns how many frames it took in.
    pub fn round(&mut self) -> usize {
        self.take_commands();
        let now = self.clock.now();
        self.pipeline.maintain(now);
        // Backpressure: while an output port is congested, leave frames in the receive rings (the kernel
        // drops there, counted in the socket's statistics, at no cost to this core) and only drive
        // transmission. Bounded, so one port that never drains cannot starve the others: after a streak of
        // congested rounds the worker receives anyway, and frames for the stuck port count as `tx_full`.
        if self.congested_streak < MAX_CONGESTED_STREAK && self.tx_congested() {
            self.congested_streak += 1;
            self.io.congested_rounds += 1;
            self.flush();
            // Copy mode: the frames in flight complete when the peer's receive work runs on this CPU, which
            // a worker spinning in user space holds off until its next syscall. One wakeup per congested port
            // lets it run (the reflector the e2e ceiling is measured with wakes its transmit every loop).
            for p in self.ports.iter_mut().flatten() {
                p.wake_congested();
            }
            // Frames handed over by other workers are still taken (their rings are not the congested port's).
            let mut moved = 0;
            for k in 0..self.handoff_in.len() {
                moved += self.poll_handoff(k);
            }
            return moved;
        }
        self.congested_streak = 0;
        let mut moved = 0;
        for id in 0..self.ports.len() {
            moved += self.poll(id as PortId);
        }
        for k in 0..self.handoff_in.len() {
            moved += self.poll_handoff(k);
        }
        if !self.pending.is_empty() {
            self.resolve_next_hops(now);
        }
        self.flush();
        moved
    }

    fn take_commands(&mut self) {
        let Some(rx) = &self.commands else { return };
        let mut got = [const { None }; 4];
        let mut n = 0;
        while n < got.len() {
            match rx.try_recv() {
                Ok(c) => {
                    got[n] = Some(c);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        for c in got.into_iter().flatten() {
            match c {
                WorkerCommand::Attach { id, io } => self.attach(id, io),
                WorkerCommand::Detach { id, done } => {
                    let io = self.detach(id);
                    let _ = done.send(io);
                }
                WorkerCommand::Flows { filter, limit, reply } => {
                    let flows = self.pipeline.flows.entries().filter(|f| filter.accepts(f)).take(limit).collect();
                    let _ = reply.try_send(flows);
                }
                WorkerCommand::FlushFlows { filter, reply } => {
                    let n = self.pipeline.flows.flush_matching(|f| filter.accepts(f));
                    let _ = reply.try_send(n);
                }
                WorkerCommand::RuleHits { reply } => {
                    let _ = reply.try_send(self.pipeline.rule_hits.clone());
                }
                WorkerCommand::Trace { count, to } => {
                    self.asked_trace = (count > 0).then_some((to, count));
                    self.pipeline.note_tracked = self.trace.is_some() || self.asked_trace.is_some();
                }
            }
        }
    }

    /// Copies the counters where the control thread can read them, if it is not reading right now.
    pub fn publish(&mut self) {
        self.read_socket_drops();
        if let Ok(mut s) = self.shared.snapshot.try_lock() {
            s.pipeline.clone_from(&self.pipeline.counters);
            s.io.clone_from(&self.io);
            s.port_drops.clone_from(&self.pipeline.port_drops);
            s.flows = self.pipeline.flows.stats;
            s.entries = self.pipeline.flows.len();
        }
    }

    /// Adds what the kernel's drop counters of each AF_XDP socket grew by since they were last read (one
    /// `getsockopt` per socket, at publication: every 100 ms, never per round).
    fn read_socket_drops(&mut self) {
        for i in 0..self.ports.len() {
            self.read_socket_drops_of(i);
        }
    }

    /// [`Worker::read_socket_drops`] for port `i`, if it is an AF_XDP socket.
    fn read_socket_drops_of(&mut self, i: usize) {
        let Some(Some(PortIo::Xsk(sock))) = self.ports.get(i) else { return };
        let Ok(st) = sock.statistics() else { return };
        let now = [st.rx_fill_ring_empty_descs, st.rx_ring_full, st.rx_dropped];
        let Some(seen) = self.xsk_seen.get_mut(i) else { return };
        let grew = |k: usize| now[k].saturating_sub(seen[k]);
        self.io.xsk_fill_empty += grew(0);
        self.io.xsk_rx_ring_full += grew(1);
        self.io.xsk_rx_dropped += grew(2);
        *seen = now;
    }

    fn tx_congested(&self) -> bool {
        self.ports.iter().flatten().any(PortIo::tx_congested)
    }

    /// Publishes every port's pending transmits and every frame handed to another worker.
    pub fn flush(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            p.flush();
        }
        for h in self.handoff_out.iter_mut().flatten() {
            h.flush();
        }
    }

    /// Takes one batch of frames other workers handed over (frames of flows this worker owns).
    fn poll_handoff(&mut self, k: usize) -> usize {
        let n = self.handoff_in[k].receive(&mut self.bufs, &mut self.lens, &mut self.tags);
        for i in 0..n {
            self.in_ids[i] = self.tags[i] & !FLOW_STEERED;
            self.flow_steered[i] = self.tags[i] & FLOW_STEERED != 0;
        }
        if n > 0 {
            self.io.batches += 1;
            let done = self.handle(n, true);
            self.shared.frames_done.fetch_add(done as u64, Ordering::Release);
        }
        n
    }

    /// Receives one batch on port `id` and handles it; returns how many frames it took.
    pub fn poll(&mut self, id: PortId) -> usize {
        let n = match self.ports.get_mut(id as usize) {
            None | Some(None) => return 0,
            Some(Some(PortIo::Xsk(sock))) => {
                let received = sock.receive(&mut self.descs);
                let mut n = 0;
                for i in 0..received {
                    let d = self.descs[i];
                    self.addrs[i] = d.addr;
                    if d.len as usize > FRAME_MAX {
                        count_drop(&mut self.io, &mut self.pipeline.port_drops, id, IoDrop::Oversize);
                        continue;
                    }
                    self.bufs[n][..d.len as usize].copy_from_slice(sock.frame_mut(d.addr, d.len));
                    self.lens[n] = d.len as usize;
                    n += 1;
                }
                sock.recycle(&self.addrs[..received]);
                n
            }
            Some(Some(PortIo::Tap(tap))) => {
                let mut n = 0;
                while n < BATCH {
                    match tap.read(&mut self.scratch) {
                        Some(len) if len > FRAME_MAX => {
                            count_drop(&mut self.io, &mut self.pipeline.port_drops, id, IoDrop::Oversize)
                        }
                        Some(len) => {
                            self.bufs[n][..len].copy_from_slice(&self.scratch[..len]);
                            self.lens[n] = len;
                            n += 1;
                        }
                        None => break,
                    }
                }
                n
            }
            Some(Some(PortIo::Memory(m))) => {
                let mut n = 0;
                while n < BATCH {
                    let Some(frame) = m.rx.pop_front() else { break };
                    if frame.len() > FRAME_MAX {
                        count_drop(&mut self.io, &mut self.pipeline.port_drops, id, IoDrop::Oversize);
                        continue;
                    }
                    self.bufs[n][..frame.len()].copy_from_slice(&frame);
                    self.lens[n] = frame.len();
                    n += 1;
                }
                n
            }
        };
        self.in_ids[..n].fill(id);
        self.flow_steered[..n].fill(false);
        if n > 0 {
            self.io.batches += 1;
            let done = self.handle(n, false);
            self.shared.frames_done.fetch_add(done as u64, Ordering::Release);
        }
        n
    }

    fn count_rx(&mut self, id: PortId) {
        // Frames are received only on attached ports, whose row `attach` made.
        if let Some(n) = self.io.rx.get_mut(id as usize) {
            *n += 1;
        }
    }

    /// Sends `frame` out of port `id`, counting it; false if the port would not take it.
    fn transmit(ports: &mut [Option<PortIo>], io: &mut IoCounters, id: PortId, frame: &[u8]) -> bool {
        if !send(ports.get_mut(id as usize), frame) {
            return false;
        }
        // A port that took the frame is attached, so its row exists.
        if let Some(n) = io.tx.get_mut(id as usize) {
            *n += 1;
        }
        true
    }

    /// Decides and forwards the `n` frames in the buffers (frame `i` arrived on port `in_ids[i]`); frames of
    /// flows another worker owns are handed to it first, unless they were handed here (`handed`). Returns
    /// how many frames were finished here.
    fn handle(&mut self, n: usize, handed: bool) -> usize {
        // One version of the tables for the whole batch: steering, deciding, rewriting and reporting.
        let tables = self.pipeline.tables();
        let t: &TableSet = &tables;
        // The batch's packet slots are filled in place (`ingest_into`); the first `frame_of.len()` of them
        // hold this batch's packets.
        self.frame_of.clear();
        self.datagram_of.clear();
        let mut is_arp = [false; BATCH];
        let mut finished = n;
        let now = self.clock.now();
        for (i, arp_frame) in is_arp.iter_mut().enumerate().take(n) {
            let id = self.in_ids[i];
            if !handed {
                self.count_rx(id);
            }
            let Some(port) = t.ports.port_of_id(id) else {
                self.dropped(id, IoDrop::NoPort);
                continue;
            };
            let frame = &self.bufs[i][..self.lens[i]];
            if arp::ethertype(frame) == Some(arp::ETHERTYPE_ARP) {
                *arp_frame = true;
                continue;
            }
            if self.neighbour_discovery(t, port, i) {
                continue;
            }
            let frame = &self.bufs[i][..self.lens[i]];
            let mut datagram = None;
            if let Some(f) = fragment_of(frame) {
                // Reassembly before conntrack, on the worker that gathers this datagram's fragments.
                if self.workers > 1 && !handed {
                    let o = fragment_owner(f.src, f.dst, f.ident, self.workers);
                    if o != self.id {
                        finished -= 1;
                        self.hand_off(o, id, i);
                        continue;
                    }
                }
                self.pipeline.counters.fragments += 1;
                match self.pipeline.reassembly.insert(&f, frame, now) {
                    Insert::Held => continue,
                    Insert::Dropped { reason, fragments } => {
                        // All counted on this fragment's port (a datagram's fragments come by one port).
                        self.pipeline.fragments_dropped(Some(id), reason, fragments);
                        continue;
                    }
                    Insert::Complete(s) => {
                        self.pipeline.counters.reassembled += 1;
                        datagram = Some(s);
                    }
                }
            }
            let frame = match datagram {
                Some(s) => self.pipeline.reassembly.datagram(s),
                None => &self.bufs[i][..self.lens[i]],
            };
            let kept = self.frame_of.len();
            ingest_into(port, frame, &mut self.batch[kept], &mut self.parsed[kept]);
            let (header, inner) = (self.batch[kept].header, self.batch[kept].inner);
            if let Some(s) = datagram.filter(|_| self.workers > 1 && !self.flow_steered[i]) {
                let o = owner(&header, inner, &t.service_ends, self.workers);
                if o != self.id {
                    // Its flow is another worker's: the fragments go there, to be gathered and decided.
                    finished -= 1;
                    self.hand_off_datagram(o, id, s);
                    continue;
                }
            }
            if datagram.is_none()
                && self.workers > 1
                && !handed
                && self.parsed[kept].as_ref().is_some_and(Parsed::is_ip)
            {
                let o = owner(&header, inner, &t.service_ends, self.workers);
                if o != self.id {
                    finished -= 1;
                    self.hand_off(o, id, i);
                    continue;
                }
            }
            self.frame_of.push(i);
            self.datagram_of.push(datagram);
        }
        // ARP first, in arrival order (it never enters the pipeline).
        for i in (0..n).filter(|&i| is_arp[i]) {
            if let Some(port) = t.ports.port_of_id(self.in_ids[i]) {
                self.arp(t, port, i);
            }
        }
        let kept = self.frame_of.len();
        if kept == 0 {
            return finished;
        }
        self.pipeline.process(t, &mut self.batch[..kept], now);
        // Borrowed out of `self` for the loop (a move of the vectors, not of their contents): a packet is
        // over 500 bytes, too big to copy per frame.
        let batch = std::mem::take(&mut self.batch);
        let parsed_all = std::mem::take(&mut self.parsed);
        let frame_of = std::mem::take(&mut self.frame_of);
        for (b, p) in batch[..kept].iter().enumerate() {
            let i = frame_of[b];
            let parsed = &parsed_all[b];
            let datagram = self.datagram_of[b];
            if let Some(s) = datagram {
                // Its headers where the logs, the answers and the MAC learning look for them.
                let whole = self.pipeline.reassembly.datagram(s);
                let n = whole.len().min(FRAME_MAX);
                self.bufs[i][..n].copy_from_slice(&whole[..n]);
                self.lens[i] = n;
            }
            self.learn_source(t, p, i, parsed.as_ref());
            if p.logs[0].is_some() && self.logs.is_some() {
                if let Some(parsed) = parsed {
                    self.log(t, p, i, parsed);
                }
            }
            let mut verdict = p.verdict;
            let mut out = p.out;
            if verdict == Verdict::Allow {
                let parsed = parsed.as_ref().expect("an allowed packet parsed");
                let len = self.lens[i];
                let rewritten = match datagram {
                    Some(s) => rewrite(self.pipeline.reassembly.datagram_mut(s), parsed, p, &t.ports),
                    None => rewrite(&mut self.bufs[i][..len], parsed, p, &t.ports),
                };
                match rewritten {
                    Ok(()) if datagram.is_some() => {
                        let o = out.expect("an allowed packet has an output port");
                        self.send_datagram(t, p, o, datagram.unwrap_or_default(), i, now);
                    }
                    Ok(()) => {
                        let o = out.expect("an allowed packet has an output port");
                        let o_id = t.ports.id_of(o);
                        match self.fill_next_hop_mac(t, p, o, i) {
                            Ok(()) => {
                                if !Self::transmit(&mut self.ports, &mut self.io, o_id, &self.bufs[i][..len]) {
                                    self.dropped(self.in_ids[i], IoDrop::TxQueueFull);
                                }
                            }
                            Err(next_hop) => self.hold(o_id, next_hop, i, now, self.in_ids[i]),
                        }
                    }
                    Err(_) => {
                        verdict = Verdict::Drop;
                        out = None;
                        self.pipeline.dropped_after_rewrite(self.in_ids[i], DropReason::TtlExceeded);
                        // The ICMP error back to the sender: a rare path, allowed to allocate.
                        if let Some(icmp) = time_exceeded(parsed, &t.ports) {
                            Self::transmit(&mut self.ports, &mut self.io, self.in_ids[i], &icmp);
                        }
                    }
                }
            }
            let answer = p.answer.and_then(|a| self.pipeline.answers.get(a as usize).copied());
            let rejected = match (answer, parsed.as_ref()) {
                (Some(a), Some(parsed)) if verdict == Verdict::Drop => self.send_answer(t, &a, parsed, i, now),
                _ => false,
            };
            if self.trace.is_some() || self.asked_trace.is_some() {
                let rec = TraceRecord {
                    in_port: self.in_ids[i],
                    port: p.port,
                    header: p.header,
                    verdict,
                    decision: p.decision,
                    out: if verdict == Verdict::Allow { out } else { None },
                    out_port: if verdict == Verdict::Allow { out.map(|o| t.ports.id_of(o)) } else { None },
                    translated: p.translated,
                    logs: p.logs,
                    tracked: p.tracked,
                    epoch: t.epoch,
                    rejected,
                    rule_hits: p.rule_hits,
                };
                if let Some(trace) = &self.trace {
                    if trace.try_send(rec).is_err() {
                        self.io.trace_lost += 1;
                    }
                }
                if let Some((to, left)) = &mut self.asked_trace {
                    // A full queue costs the operator a record (counted), never the worker a wait.
                    match to.try_send(rec) {
                        Ok(()) => *left -= 1,
                        Err(TrySendError::Full(_)) => self.io.trace_lost += 1,
                        Err(TrySendError::Disconnected(_)) => *left = 0,
                    }
                    if *left == 0 {
                        self.asked_trace = None;
                        self.pipeline.note_tracked = self.trace.is_some();
                    }
                }
            }
        }
        for s in self.datagram_of.iter().flatten() {
            self.pipeline.reassembly.release(*s);
        }
        self.batch = batch;
        self.parsed = parsed_all;
        self.frame_of = frame_of;
        finished
    }

    /// Hands frame `i` (from port `id`) to worker `o`.
    fn hand_off(&mut self, o: usize, id: PortId, i: usize) {
        let sent = match self.handoff_out.get_mut(o) {
            Some(Some(h)) => h.send(id, &self.bufs[i][..self.lens[i]]),
            _ => false,
        };
        if sent {
            self.io.handed_off += 1;
        } else {
            self.dropped(id, IoDrop::HandoffRingFull);
        }
    }

    /// Hands the fragments of datagram `s` (from port `id`), as they arrived, to worker `o`, which owns its
    /// flow; the slot is free again.
    fn hand_off_datagram(&mut self, o: usize, id: PortId, s: usize) {
        let mut pieces = [(0, 0); MAX_FRAGMENTS];
        let (layout, n) = self.pipeline.reassembly.pieces(s, &mut pieces);
        for (k, &(off, len)) in pieces[..n].iter().enumerate() {
            let whole = self.pipeline.reassembly.datagram(s);
            let Some(m) = write_fragment(whole, &layout, off.into(), len.into(), k + 1 < n, &mut self.scratch) else {
                self.dropped(id, IoDrop::Oversize);
                continue;
            };
            let sent = match self.handoff_out.get_mut(o) {
                Some(Some(h)) => h.send(id | FLOW_STEERED, &self.scratch[..m]),
                _ => false,
            };
            if sent {
                self.io.handed_off += 1;
            } else {
                self.dropped(id, IoDrop::HandoffRingFull);
            }
        }
        self.pipeline.reassembly.release(s);
    }

    /// Sends allowed datagram `s` (rewritten) out of `o` as the fragments it arrived as, each with the
    /// datagram's headers (Linux's `ip_do_fragment` / `ip6_fragment` along the reassembled geometry), through
    /// buffer `i`.
    fn send_datagram(&mut self, t: &TableSet, p: &Packet, o: Port, s: usize, i: usize, now: Nanos) {
        let o_id = t.ports.id_of(o);
        let mac = self.next_hop_mac(t, p, o);
        let mut pieces = [(0, 0); MAX_FRAGMENTS];
        let (layout, n) = self.pipeline.reassembly.pieces(s, &mut pieces);
        for (k, &(off, len)) in pieces[..n].iter().enumerate() {
            let whole = self.pipeline.reassembly.datagram(s);
            let Some(m) = write_fragment(whole, &layout, off.into(), len.into(), k + 1 < n, &mut self.bufs[i]) else {
                self.dropped(self.in_ids[i], IoDrop::Oversize);
                continue;
            };
            self.lens[i] = m;
            match mac {
                Ok(known) => {
                    if let Some(mac) = known {
                        self.bufs[i][0..6].copy_from_slice(&mac);
                    }
                    if !Self::transmit(&mut self.ports, &mut self.io, o_id, &self.bufs[i][..m]) {
                        self.dropped(self.in_ids[i], IoDrop::TxQueueFull);
                    }
                }
                Err(next_hop) => self.hold(o_id, next_hop, i, now, self.in_ids[i]),
            }
        }
    }

    /// Sends the answer the pipeline decided for dropped frame `i` (parsed as `parsed`; Felix's Reject
    /// deny action): the port unreachable built as the host sends it, rewritten, routed and resolved like
    /// any frame. It takes frame `i`'s buffer, whose frame is done. A rare path, allowed to allocate.
    fn send_answer(&mut self, t: &TableSet, answer: &Packet, parsed: &Parsed, i: usize, now: Nanos) -> bool {
        let mac = mac_for_host(&t.ports);
        let spec = crate::wire::FrameSpec { src_mac: mac, dst_mac: mac, ..crate::wire::FrameSpec::new(answer.header) };
        let frame = crate::wire::build_icmp_error(&spec, &parsed.header);
        let Some(o) = answer.out.filter(|_| frame.len() <= FRAME_MAX) else { return false };
        let len = frame.len();
        self.bufs[i][..len].copy_from_slice(&frame);
        self.lens[i] = len;
        let (_, Some(answer_parsed)) = ingest(Port::Host, &self.bufs[i][..len]) else { return false };
        if answer.logs[0].is_some() && self.logs.is_some() {
            self.log(t, answer, i, &answer_parsed);
        }
        if rewrite(&mut self.bufs[i][..len], &answer_parsed, answer, &t.ports).is_err() {
            return false;
        }
        let o_id = t.ports.id_of(o);
        // The answer comes from the host's stack: its losses count on the host's port.
        let host = self.host_port();
        match self.fill_next_hop_mac(t, answer, o, i) {
            Ok(()) => {
                if !Self::transmit(&mut self.ports, &mut self.io, o_id, &self.bufs[i][..len]) {
                    self.dropped(host, IoDrop::TxQueueFull);
                }
            }
            Err(next_hop) => self.hold(o_id, next_hop, i, now, host),
        }
        self.io.rejected += 1;
        true
    }

    /// Learns MACs from what a decided frame shows: a pod's own address and MAC (once the pipeline has ruled
    /// out a spoofed source), an on-link neighbour on an uplink.
    fn learn_source(&mut self, t: &TableSet, p: &Packet, i: usize, parsed: Option<&Parsed>) {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.bufs[i][6..12]);
        match p.port {
            Port::Uplink(u) => {
                if let Some(parsed) = parsed {
                    if t.ports.uplink_on_link(u, parsed.header.src) {
                        self.neighbours.learn(parsed.header.src, mac);
                    }
                }
            }
            Port::Workload(w) => {
                if p.decision != Decision::SourceSpoofed && t.ports.workload_of(p.header.src) == Some(w) {
                    self.neighbours.learn(p.header.src, mac);
                }
            }
            Port::Host => {}
        }
    }

    /// The Log rules' lines for packet `p` (frame `i`, as it arrived), queued for the writer thread. A rare,
    /// rate-limited path, so formatting may allocate.
    fn log(&mut self, t: &TableSet, p: &Packet, i: usize, parsed: &Parsed) {
        let node = &t.world.node;
        let name = |port: Option<Port>| match port {
            Some(Port::Uplink(u)) => node.uplinks.get(u as usize).map(|u| u.name.as_str()).unwrap_or(""),
            Some(Port::Workload(w)) => {
                node.workloads.get(w as usize).and_then(|w| w.interface.as_deref()).unwrap_or("")
            }
            Some(Port::Host) | None => "",
        };
        let Some(logs) = self.logs.as_mut() else { return };
        let limit = t.world.node.felix.log_prefix_limit();
        for hit in p.logs.iter().flatten() {
            let prefix = log_for(&t.world, rule_ref(t, hit.ep, hit.stage, hit.dir, hit.rule)).prefix;
            let out = if p.verdict == Verdict::Allow { p.out } else { None };
            let leader = log_leader(&prefix, limit);
            let line = log_line(&leader, name(Some(p.port)), name(out), &self.bufs[i][..self.lens[i]], parsed);
            match logs.queue.try_send(line) {
                Ok(()) => self.io.log_lines += 1,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.io.log_dropped += 1,
            }
        }
    }

    /// Sets the destination MAC where the configuration does not give it: a pod's MAC as learned from its
    /// frames or ARP, an on-link neighbour or the gateway as learned on the uplink. `Err(next hop)` when it
    /// is not known yet (the caller holds the frame while the next hop is resolved).
    fn fill_next_hop_mac(&mut self, t: &TableSet, p: &Packet, out: Port, i: usize) -> Result<(), IpAddr> {
        if let Some(mac) = self.next_hop_mac(t, p, out)? {
            self.bufs[i][0..6].copy_from_slice(&mac);
        }
        Ok(())
    }

    /// The destination MAC [`Worker::fill_next_hop_mac`] sets: `Ok(None)` when the rewrite's is right.
    fn next_hop_mac(&self, t: &TableSet, p: &Packet, out: Port) -> Result<Option<[u8; 6]>, IpAddr> {
        let ports: &PortMap = &t.ports;
        let dst = p.translated.map(|d| d.ip()).unwrap_or(p.header.dst);
        let next_hop = match out {
            Port::Workload(w) if ports.workload_mac.get(w as usize).copied().flatten().is_none() => dst,
            Port::Uplink(u) if ports.uplink_on_link(u, dst) => dst,
            Port::Uplink(u) if ports.gateway_mac.get(u as usize).copied().flatten().is_none() => {
                match t.world.node.uplinks.get(u as usize).and_then(|up| up.gateway(dst)) {
                    Some(gw) => gw,
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        self.neighbours.get(next_hop).map(Some).ok_or(next_hop)
    }

    /// Keeps frame `i` (from port `from`) until the MAC of `next_hop` (through port `out`) is known, as
    /// Linux queues packets behind an unresolved neighbour; the first frame for a next hop sends its first
    /// probe.
    fn hold(&mut self, out: PortId, next_hop: IpAddr, i: usize, now: Nanos, from: PortId) {
        match self.pending.hold(out, next_hop, &self.bufs[i][..self.lens[i]], now, from) {
            Ok(first) => {
                self.io.held += 1;
                if let Some(gone) = self.pending.displaced_from {
                    self.dropped(gone, IoDrop::NoNeighbour);
                }
                if first {
                    self.resolve_next_hops(now);
                }
            }
            Err(_) => self.dropped(from, IoDrop::NoNeighbour),
        }
    }

    /// Sends the frames whose next hop has become known, probes the others when due, and drops the frames
    /// of next hops that did not answer.
    fn resolve_next_hops(&mut self, now: Nanos) {
        let tables = self.pipeline.tables();
        let mut known = [(0 as PortId, IpAddr::V4(Ipv4Addr::UNSPECIFIED)); nexthop::TARGETS];
        let mut k = 0;
        for (port, ip) in self.pending.targets() {
            if self.neighbours.get(ip).is_some() {
                known[k] = (port, ip);
                k += 1;
            }
        }
        for &(port, ip) in &known[..k] {
            let Some(mac) = self.neighbours.get(ip) else { continue };
            let mut slots = [0usize; nexthop::HELD_PER_TARGET];
            let n = self.pending.resolved(port, ip, &mut slots);
            for &slot in &slots[..n] {
                let from = self.pending.from(slot).unwrap_or(PortId::MAX);
                let frame = self.pending.frame(slot);
                frame[0..6].copy_from_slice(&mac);
                if !Self::transmit(&mut self.ports, &mut self.io, port, frame) {
                    self.dropped(from, IoDrop::TxQueueFull);
                }
                self.pending.free(slot);
            }
        }
        let mut due = [None; nexthop::TARGETS];
        let (io, drops) = (&mut self.io, &mut self.pipeline.port_drops);
        let n = self.pending.due(now, &mut due, &mut |from| count_drop(io, drops, from, IoDrop::NoNeighbour));
        for d in due[..n].iter().flatten() {
            // A failed next hop's frames were counted as they were dropped.
            if let Due::Probe { port, ip } = *d {
                self.probe(&tables, port, ip);
            }
        }
    }

    /// Asks port `id` for the MAC of `ip`: an ARP request for IPv4, a neighbour solicitation for IPv6 (from
    /// the port's link-local address, as Linux does for a forwarded packet).
    fn probe(&mut self, t: &TableSet, id: PortId, ip: IpAddr) {
        let Some(port) = t.ports.port_of_id(id) else { return };
        let mac = match port {
            Port::Uplink(u) => match t.ports.uplink_mac.get(u as usize).copied().flatten() {
                Some(m) => m,
                None => return,
            },
            Port::Workload(_) => WORKLOAD_GATEWAY_MAC,
            Port::Host => return,
        };
        let n = match ip {
            IpAddr::V4(target) => {
                let sender = match port {
                    Port::Uplink(u) => t.world.node.uplinks.get(u as usize).and_then(|up| {
                        up.addrs.iter().find_map(|a| match a {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                    }),
                    _ => Some(Ipv4Addr::new(169, 254, 1, 1)),
                };
                let Some(sender) = sender else { return };
                arp::request(mac, sender, target, &mut self.scratch)
            }
            IpAddr::V6(target) => {
                let source = match port {
                    Port::Workload(_) => WORKLOAD_GATEWAY_LL,
                    _ => ndp::link_local(mac),
                };
                ndp::solicitation(mac, source, target, &mut self.scratch)
            }
        };
        if Self::transmit(&mut self.ports, &mut self.io, id, &self.scratch[..n]) {
            match ip {
                IpAddr::V4(_) => self.io.arp_asked += 1,
                IpAddr::V6(_) => self.io.ndp_asked += 1,
            }
        }
    }

    /// Neighbour discovery before the pipeline: a pod's solicitation is answered with the veth's MAC (as the
    /// host side of a Calico veth does; Felix accepts NDP from pods before any policy, semantics §I.2a), the
    /// host's solicitation for a local pod's address with the tap's; advertisements from pods and on-link
    /// neighbours are learned (and go on). True if frame `i` was consumed here.
    fn neighbour_discovery(&mut self, t: &TableSet, port: Port, i: usize) -> bool {
        let frame = &self.bufs[i][..self.lens[i]];
        if frame.len() < 14 + 40 + 24 || frame[12..14] != [0x86, 0xdd] || frame[20] != 58 {
            return false;
        }
        if let Some(na) = ndp::parse_advertisement(frame) {
            let target = IpAddr::V6(na.target);
            let learn = match port {
                Port::Workload(w) => t.ports.workload_of(target) == Some(w),
                Port::Uplink(u) => t.ports.uplink_on_link(u, target) || is_gateway(t, u, target),
                Port::Host => false,
            };
            if learn {
                self.neighbours.learn(target, na.mac);
            }
            // A pod's advertisement answers the veth's own solicitation (to its link-local address): it ends
            // here, as it ends in the host's neighbour table on a Linux node. An uplink's goes on to the host.
            return matches!(port, Port::Workload(_));
        }
        let Some(ns) = ndp::parse_solicitation(frame) else { return false };
        let answer = match port {
            Port::Workload(_) => Some(WORKLOAD_GATEWAY_MAC),
            Port::Host if t.ports.workload_of(IpAddr::V6(ns.target)).is_some() => Some(mac_for_host(&t.ports)),
            _ => None,
        };
        let Some(mac) = answer else { return false };
        let n = ndp::advertisement(&ns, mac, &mut self.scratch);
        if Self::transmit(&mut self.ports, &mut self.io, self.in_ids[i], &self.scratch[..n]) {
            self.io.ndp_answered += 1;
        }
        true
    }

    /// ARP: pods get proxy-ARP replies; uplink and tap pass ARP to each other; the host's ARP for a pod is
    /// answered here.
    fn arp(&mut self, t: &TableSet, port: Port, i: usize) {
        let len = self.lens[i];
        let here = self.in_ids[i];
        let Some(a) = arp::parse(&self.bufs[i][..len]) else {
            self.dropped(here, IoDrop::ArpDropped);
            return;
        };
        let host = self.host_port();
        match port {
            Port::Workload(w) => {
                if t.ports.workload_of(IpAddr::V4(a.sender_ip)) == Some(w) {
                    self.neighbours.learn(IpAddr::V4(a.sender_ip), a.sender_mac);
                }
                if a.request {
                    let n = arp::reply(&a, WORKLOAD_GATEWAY_MAC, &mut self.scratch);
                    Self::transmit(&mut self.ports, &mut self.io, here, &self.scratch[..n]);
                    self.io.arp_replied += 1;
                }
            }
            Port::Uplink(_) => {
                self.neighbours.learn(IpAddr::V4(a.sender_ip), a.sender_mac);
                if Self::transmit(&mut self.ports, &mut self.io, host, &self.bufs[i][..len]) {
                    self.io.arp_passed += 1;
                } else {
                    self.dropped(here, IoDrop::ArpDropped);
                }
            }
            Port::Host => {
                let pod = t.ports.workload_of(IpAddr::V4(a.target_ip)).is_some();
                if a.request && pod {
                    let n = arp::reply(&a, mac_for_host(&t.ports), &mut self.scratch);
                    Self::transmit(&mut self.ports, &mut self.io, host, &self.scratch[..n]);
                    self.io.arp_replied += 1;
                    return;
                }
                let target = IpAddr::V4(a.target_ip);
                let u = (0..self.uplinks as u16).find(|&u| t.ports.uplink_on_link(u, target)).unwrap_or(0);
                if self.uplinks > 0 && Self::transmit(&mut self.ports, &mut self.io, u, &self.bufs[i][..len]) {
                    self.io.arp_passed += 1;
                } else {
                    self.dropped(here, IoDrop::ArpDropped);
                }
            }
        }
    }
}

/// Counts one frame from port `id` dropped around the pipeline for `d`: node-wide by reason, and by port
/// (a function of the two counters alone, so callers can count while they hold other parts of the worker).
fn count_drop(io: &mut IoCounters, drops: &mut PortDrops, id: PortId, d: IoDrop) {
    let node_wide = match d {
        IoDrop::TxQueueFull => &mut io.tx_full,
        IoDrop::Oversize => &mut io.oversize,
        IoDrop::NoPort => &mut io.no_port,
        IoDrop::NoNeighbour => &mut io.no_neighbour,
        IoDrop::HandoffRingFull => &mut io.handoff_full,
        IoDrop::ArpDropped => &mut io.arp_dropped,
    };
    *node_wide += 1;
    drops.io(id, d);
}

fn is_gateway(t: &TableSet, u: u16, ip: IpAddr) -> bool {
    t.world.node.uplinks.get(u as usize).is_some_and(|up| up.gateways.contains(&ip))
}

/// The MAC the dataplane answers the host with when it asks for a pod (ARP or NDP): the uplink's, which the
/// tap carries too.
fn mac_for_host(ports: &PortMap) -> [u8; 6] {
    ports.uplink_mac.first().copied().flatten().unwrap_or(WORKLOAD_GATEWAY_MAC)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use calxdp_policy::compile::ProgramCache;
    use calxdp_policy::node::NodeConfig;
    use calxdp_policy::resolve::ResolvedNode;
    use calxdp_policy::resource::ResourceSet;
    use calxdp_policy::yaml::{parse_documents, Field, Origin};

    use super::{Clock, PortIo, Worker, WorkerShared};
    use crate::pipeline::Pipeline;
    use crate::ports::MemoryPort;
    use crate::sys::socket::{XskConfig, XskSocket};
    use crate::tables::{TableSet, TableSlot};

    /// Frames the kernel drops in front of a socket the worker has not read since its last publication are
    /// counted when the socket is detached (root: a veth pair in a namespace of its own; the worker never
    /// polls, so the socket's small rings overflow).
    #[test]
    #[ignore = "needs root (a network namespace of its own): scripts/test runs it with --include-ignored as root"]
    fn a_detached_sockets_last_kernel_drops_are_counted() {
        assert!(crate::sys::process::is_root(), "needs root");
        let namespace = crate::sys::netns::TestNamespace::new("cxw");
        let ns = namespace.0.clone();
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
        // No IPv6: its timers (DAD, router solicitations) would send frames of their own into the socket.
        for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
            assert!(ip(&["netns", "exec", &ns, "sysctl", "-q", "-w", key]));
        }
        assert!(ip(&["-n", &ns, "link", "add", "wa", "type", "veth", "peer", "name", "wb"]));
        assert!(ip(&["-n", &ns, "link", "set", "wa", "up"]));
        assert!(ip(&["-n", &ns, "link", "set", "wb", "up"]));
        let cfg = XskConfig { frames: 64, frame_size: 2048, ring_size: 16 };
        let opened = crate::sys::netns::run_in(&ns, move || {
            let mut redirect = crate::xdp::Redirect::attach("wa").map_err(|e| e.to_string())?;
            let sock = XskSocket::open("wa", 0, cfg).map_err(|e| e.to_string())?;
            redirect.register(0, sock.fd()).map_err(|e| e.to_string())?;
            // More frames than the socket's rings and UMEM hold, into a worker that does not read them.
            let out = crate::sys::packet::PacketSocket::open("wb").map_err(|e| e.to_string())?;
            let mut frame = vec![0u8; 60];
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            for _ in 0..200 {
                out.send(&frame).map_err(|e| e.to_string())?;
            }
            // Until the kernel has counted them all (the receive work may run a little later).
            let mut last = None;
            for _ in 0..100 {
                let st = sock.statistics().map_err(|e| e.to_string())?;
                let now = (st.rx_dropped, st.rx_ring_full, st.rx_fill_ring_empty_descs);
                if last == Some(now) {
                    break;
                }
                last = Some(now);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok::<_, String>((redirect, sock))
        });
        let (redirect, sock) = match opened {
            Ok(Ok(made)) => made,
            other => panic!("setting up the socket: {other:?}"),
        };

        let origin = Origin::file("node.yaml");
        let docs = parse_documents("name: n\n", &origin).unwrap();
        let node = NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap();
        let world = ResolvedNode::new(&node, &ResourceSet::new());
        let compiled = ProgramCache::new().compile(&world, 1);
        let slot = Arc::new(TableSlot::new(TableSet::new(1, Arc::new(world), Arc::new(compiled))));
        let ports = vec![Some(PortIo::Xsk(Box::new(sock))), Some(PortIo::Memory(MemoryPort::new()))];
        let shared = Arc::new(WorkerShared::default());
        let mut w = Worker::new(Pipeline::new(slot, 16), ports, 1, shared, Arc::new(Clock::manual()), None, None);
        let back = w.detach(0);
        let Some(PortIo::Xsk(sock)) = back else { panic!("the socket is handed back") };
        let st = sock.statistics().unwrap();
        drop(sock);
        drop(redirect);
        drop(namespace);

        assert!(st.rx_dropped + st.rx_ring_full > 0, "the kernel dropped frames in front of the socket: {st:?}");
        assert_eq!(
            [w.io.xsk_fill_empty, w.io.xsk_rx_ring_full, w.io.xsk_rx_dropped],
            [st.rx_fill_ring_empty_descs, st.rx_ring_full, st.rx_dropped],
            "every drop the kernel counted is the worker's"
        );
        assert_eq!(w.io.xsk_dropped(), st.rx_dropped + st.rx_ring_full);
    }
}
