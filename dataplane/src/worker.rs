//! A poll-mode worker: owns one queue of every port (an AF_XDP socket per uplink and pod veth, a queue of
//! the host tap), pulls batches of frames, runs them through the [`Pipeline`] unchanged, rewrites the
//! allowed ones and sends them out of their port. ARP is answered or passed here, before the pipeline
//! (DESIGN.md "The node").
//!
//! Each batch is copied out of the receive UMEM into the worker's own buffers, and each frame that leaves
//! is copied into the UMEM of the port it leaves by: copy-mode AF_XDP on veth copies anyway, and this keeps
//! every socket's frame accounting private to it. Nothing on this path allocates (the trace and log
//! paths aside, which are off unless asked for, and rate-limited).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::verdict::Verdict;

use crate::arp::{self, Neighbours};
use crate::flow::Nanos;
use crate::frames::{ingest, rewrite, time_exceeded};
use crate::log::{log_line, LogLimiter};
use crate::ndp;
use crate::owner::owner;
use crate::path::{Port, PortMap, WORKLOAD_GATEWAY_MAC};
use crate::pipeline::{rule_ref, Counters, Decision, DropReason, LogHit, Packet, Pipeline, MAX_LOGS};
use crate::tables::TableSet;
use crate::wire::Parsed;
use crate::xsk::handoff::{HandoffReceiver, HandoffSender};
use crate::xsk::ring::XdpDesc;
use crate::xsk::socket::XskSocket;
use crate::xsk::tap::Tap;

/// The least time between two ARP requests of one worker.
const ARP_ASK_INTERVAL: Nanos = 10_000_000;
/// Frames a worker holds while their next hop is being resolved, and for how long at most.
const HELD_MAX: usize = 16;
const HOLD_FOR: Nanos = 1_000_000_000;

/// A frame waiting for its next hop's MAC.
#[derive(Clone, Copy, Debug)]
struct Pending {
    out: Port,
    next_hop: IpAddr,
    len: usize,
    since: Nanos,
}

/// Congested rounds in a row before the worker receives regardless (roughly 100 µs).
const MAX_CONGESTED_STREAK: u32 = 64;
/// Spins between transmit wakeups while an output port is congested (about a microsecond).
const CONGESTED_PAUSE_SPINS: u32 = 256;

/// Frames per batch.
pub const BATCH: usize = 64;
/// Largest frame the worker handles (a standard MTU plus Ethernet and VLAN headers).
pub const FRAME_MAX: usize = crate::xsk::handoff::SLOT_BYTES;

/// The dataplane's clock: monotonic time since start, plus an offset a test may advance (a parity
/// scenario's `advance` step), so timeouts run without waiting.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    offset: AtomicU64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock { start: Instant::now(), offset: AtomicU64::new(0) }
    }
}

impl Clock {
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos + self.offset.load(Ordering::Relaxed)
    }

    pub fn advance(&self, by: Duration) {
        self.offset.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// What one frame met, for `--trace` and the live parity level ("why was this packet dropped?").
#[derive(Clone, Copy, Debug)]
pub struct TraceRecord {
    pub port: Port,
    pub header: PacketHeader,
    pub verdict: Verdict,
    pub decision: Decision,
    pub out: Option<Port>,
    pub translated: Option<SocketAddr>,
    pub logs: [Option<LogHit>; MAX_LOGS],
    /// Whether conntrack holds an entry for the packet's flow after it.
    pub tracked: bool,
    pub epoch: u64,
}

/// Counters of the work around the pipeline (ARP, transmit), per worker.
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
    /// Allowed frames held until their next hop's MAC was known; those dropped because it never came (or
    /// no slot was free); the ARP requests sent.
    pub held: u64,
    pub no_neighbour: u64,
    pub arp_asked: u64,
    /// Log-rule lines written, and those the Felix rate limit suppressed.
    pub log_lines: u64,
    pub log_suppressed: u64,
}

impl IoCounters {
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
            log_lines,
            log_suppressed,
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
        self.log_lines += log_lines;
        self.log_suppressed += log_suppressed;
    }
}

/// What a worker shares with the control thread: its stop flag and a snapshot of its counters.
#[derive(Debug, Default)]
pub struct WorkerShared {
    pub stop: AtomicBool,
    /// Frames this worker has finished (decided and sent or dropped); read by tests to know a frame is done.
    pub frames_done: AtomicU64,
    /// The counters as of the last publication (about every 100 ms; only `try_lock`ed by the worker).
    pub snapshot: Mutex<(Counters, IoCounters)>,
}

/// One port's queue as this worker sees it.
#[derive(Debug)]
pub enum PortIo {
    Xsk(Box<XskSocket>),
    Tap(Tap),
}

/// A worker and everything it owns.
#[derive(Debug)]
pub struct Worker {
    pub pipeline: Pipeline,
    /// By counter slot: uplinks, then workloads, then the host.
    ports: Vec<Option<PortIo>>,
    uplinks: usize,
    workloads: usize,
    bufs: Vec<[u8; FRAME_MAX]>,
    lens: [usize; BATCH],
    /// The port each buffered frame arrived on.
    in_ports: [Port; BATCH],
    tags: [u16; BATCH],
    /// This worker's index, and the links to and from the other workers (by worker index; `None` for
    /// itself). Flows are owned by one worker each (`owner.rs`).
    id: usize,
    workers: usize,
    handoff_out: Vec<Option<HandoffSender>>,
    handoff_in: Vec<HandoffReceiver>,
    batch: Vec<Packet>,
    parsed: Vec<Option<Parsed>>,
    descs: [XdpDesc; BATCH],
    addrs: [u64; BATCH],
    scratch: [u8; FRAME_MAX],
    /// Neighbour and pod MACs, shared with the other workers.
    neighbours: Arc<Neighbours>,
    /// When this worker last sent an ARP request.
    last_ask: Nanos,
    /// Frames waiting for their next hop's MAC, and their bytes.
    pending: [Option<Pending>; HELD_MAX],
    pending_bufs: Vec<[u8; FRAME_MAX]>,
    pub io: IoCounters,
    /// Felix's LogActionRateLimit for the Log rules' lines (written to stderr, kernel LOG format); `None`
    /// writes no lines (the trace still records the hits).
    limiter: Option<LogLimiter>,
    shared: Arc<WorkerShared>,
    clock: Arc<Clock>,
    trace: Option<SyncSender<TraceRecord>>,
}

impl Worker {
    /// A worker over `ports` (indexed by counter slot; `None` where this worker has no queue). `limiter`
    /// rate-limits the Log rules' lines.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pipeline: Pipeline,
        ports: Vec<Option<PortIo>>,
        uplinks: usize,
        workloads: usize,
        shared: Arc<WorkerShared>,
        clock: Arc<Clock>,
        trace: Option<SyncSender<TraceRecord>>,
        limiter: Option<LogLimiter>,
    ) -> Worker {
        assert_eq!(ports.len(), uplinks + workloads + 1, "one entry per port slot");
        Worker {
            pipeline,
            ports,
            uplinks,
            workloads,
            bufs: vec![[0; FRAME_MAX]; BATCH],
            lens: [0; BATCH],
            in_ports: [Port::Host; BATCH],
            tags: [0; BATCH],
            id: 0,
            workers: 1,
            handoff_out: Vec::new(),
            handoff_in: Vec::new(),
            batch: Vec::with_capacity(BATCH),
            parsed: Vec::with_capacity(BATCH),
            descs: [XdpDesc::default(); BATCH],
            addrs: [0; BATCH],
            scratch: [0; FRAME_MAX],
            neighbours: Arc::new(Neighbours::with_capacity(1024)),
            last_ask: 0,
            pending: [None; HELD_MAX],
            pending_bufs: vec![[0; FRAME_MAX]; HELD_MAX],
            io: IoCounters::default(),
            limiter,
            shared,
            clock,
            trace,
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

    fn port_of_slot(&self, slot: usize) -> Port {
        if slot < self.uplinks {
            Port::Uplink(slot as u16)
        } else if slot < self.uplinks + self.workloads {
            Port::Workload((slot - self.uplinks) as u16)
        } else {
            Port::Host
        }
    }

    fn slot_of(&self, port: Port) -> usize {
        Counters::port_slot(port, self.uplinks, self.workloads)
    }

    /// Polls until the stop flag is raised. Spins while there is traffic; backs off to yields and then
    /// short sleeps when idle, so an idle node does not burn its cores.
    pub fn run(&mut self) {
        let mut idle_rounds = 0u32;
        let mut congested_streak = 0u32;
        let mut last_publish = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let mut moved = 0;
            // Backpressure: while an output port is congested, leave frames in the receive rings (the
            // kernel drops there, counted in the socket's statistics, at no cost to this core) and only
            // drive transmission.
            // Bounded, so one port that never drains cannot starve the others: after a streak of congested
            // rounds the worker receives anyway, and frames for the stuck port count as `tx_full`.
            if congested_streak < MAX_CONGESTED_STREAK && self.tx_congested() {
                congested_streak += 1;
                self.io.congested_rounds += 1;
                self.flush();
                // The kernel refuses more until the peer drains; give it a moment rather than a syscall
                // storm of refused wakeups.
                for _ in 0..CONGESTED_PAUSE_SPINS {
                    std::hint::spin_loop();
                }
                continue;
            }
            congested_streak = 0;
            for slot in 0..self.ports.len() {
                moved += self.poll(slot);
            }
            for k in 0..self.handoff_in.len() {
                moved += self.poll_handoff(k);
            }
            if self.pending.iter().any(Option::is_some) {
                self.release_held();
            }
            self.flush();
            if moved == 0 {
                idle_rounds = idle_rounds.saturating_add(1);
                if idle_rounds > 20_000 {
                    std::thread::sleep(Duration::from_micros(200));
                } else if idle_rounds > 200 {
                    std::thread::yield_now();
                }
            } else {
                idle_rounds = 0;
            }
            if last_publish.elapsed() > Duration::from_millis(100) {
                self.publish();
                last_publish = Instant::now();
            }
        }
        self.flush();
        self.publish();
    }

    /// Copies the counters where the control thread can read them, if it is not reading right now.
    pub fn publish(&mut self) {
        if let Ok(mut s) = self.shared.snapshot.try_lock() {
            s.0.clone_from(&self.pipeline.counters);
            s.1.clone_from(&self.io);
        }
    }

    fn tx_congested(&self) -> bool {
        self.ports.iter().flatten().any(|p| matches!(p, PortIo::Xsk(s) if s.tx_congested()))
    }

    /// Publishes every port's pending transmits and every frame handed to another worker.
    pub fn flush(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            if let PortIo::Xsk(s) = p {
                s.flush();
            }
        }
        for h in self.handoff_out.iter_mut().flatten() {
            h.flush();
        }
    }

    /// Takes one batch of frames other workers handed over (frames of flows this worker owns).
    fn poll_handoff(&mut self, k: usize) -> usize {
        let n = self.handoff_in[k].receive(&mut self.bufs, &mut self.lens, &mut self.tags);
        for i in 0..n {
            self.in_ports[i] = untag(self.tags[i]);
        }
        if n > 0 {
            self.io.batches += 1;
            let done = self.handle(n, true);
            self.shared.frames_done.fetch_add(done as u64, Ordering::Release);
        }
        n
    }

    /// Receives one batch on a port and handles it; returns how many frames it took.
    pub fn poll(&mut self, slot: usize) -> usize {
        let n = match &mut self.ports[slot] {
            None => return 0,
            Some(PortIo::Xsk(sock)) => {
                let received = sock.receive(&mut self.descs);
                let mut n = 0;
                for i in 0..received {
                    let d = self.descs[i];
                    self.addrs[i] = d.addr;
                    if d.len as usize > FRAME_MAX {
                        self.io.oversize += 1;
                        continue;
                    }
                    self.bufs[n][..d.len as usize].copy_from_slice(sock.frame_mut(d.addr, d.len));
                    self.lens[n] = d.len as usize;
                    n += 1;
                }
                sock.recycle(&self.addrs[..received]);
                n
            }
            Some(PortIo::Tap(tap)) => {
                let mut n = 0;
                while n < BATCH {
                    match tap.read(&mut self.bufs[n]) {
                        Some(len) => {
                            self.lens[n] = len;
                            n += 1;
                        }
                        None => break,
                    }
                }
                n
            }
        };
        let port = self.port_of_slot(slot);
        self.in_ports[..n].fill(port);
        if n > 0 {
            self.io.batches += 1;
            let done = self.handle(n, false);
            self.shared.frames_done.fetch_add(done as u64, Ordering::Release);
        }
        n
    }

    /// Decides and forwards the `n` frames in the buffers (frame `i` arrived on `in_ports[i]`); frames of
    /// flows another worker owns are handed to it first, unless they were handed here (`handed`). Returns
    /// how many frames were finished here.
    fn handle(&mut self, n: usize, handed: bool) -> usize {
        self.batch.clear();
        self.parsed.clear();
        let mut keep = [false; BATCH];
        let mut is_arp = [false; BATCH];
        let mut finished = n;
        let owners = if self.workers > 1 && !handed { Some(self.pipeline.tables()) } else { None };
        for (i, k) in keep.iter_mut().enumerate().take(n) {
            let port = self.in_ports[i];
            if arp::ethertype(&self.bufs[i][..self.lens[i]]) == Some(arp::ETHERTYPE_ARP) {
                is_arp[i] = true;
                continue;
            }
            if port == Port::Host && self.answer_host_solicitation(i) {
                continue;
            }
            if matches!(port, Port::Workload(_)) && self.answer_pod_solicitation(port, i) {
                continue;
            }
            let frame = &self.bufs[i][..self.lens[i]];
            let (packet, parsed) = ingest(port, frame);
            if let (Some(t), Some(true)) = (&owners, parsed.as_ref().map(|p| p.is_ip())) {
                let o = owner(&packet.header, packet.inner, &t.service_ends, self.workers);
                if o != self.id {
                    finished -= 1;
                    let sent = match self.handoff_out.get_mut(o) {
                        Some(Some(h)) => h.send(tag(port), frame),
                        _ => false,
                    };
                    if sent {
                        self.io.handed_off += 1;
                    } else {
                        self.io.handoff_full += 1;
                    }
                    continue;
                }
            }
            *k = true;
            self.batch.push(packet);
            self.parsed.push(parsed);
        }
        // ARP first, in arrival order (it never enters the pipeline).
        for (i, _) in is_arp.iter().enumerate().take(n).filter(|(_, a)| **a) {
            self.arp(self.in_ports[i], i);
        }
        if self.batch.is_empty() {
            return finished;
        }
        let now = self.clock.now();
        let tables = self.pipeline.process(&mut self.batch, now);
        // Borrowed out of `self` for the loop (a move of the vectors, not of their contents): a packet is
        // 480 bytes, too big to copy per frame.
        let batch = std::mem::take(&mut self.batch);
        let parsed_all = std::mem::take(&mut self.parsed);
        for (b, (i, _)) in keep.iter().enumerate().take(n).filter(|(_, k)| **k).enumerate() {
            let p = &batch[b];
            let parsed = &parsed_all[b];
            if let (Port::Uplink(u), Some(parsed)) = (p.port, parsed) {
                self.learn_uplink_neighbour(&tables, u, i, parsed);
            }
            if let Port::Workload(w) = p.port {
                // A pod's own address and MAC, once the pipeline has ruled out a spoofed source.
                if p.decision != Decision::SourceSpoofed && tables.ports.workload_by_ip.get(&p.header.src) == Some(&w) {
                    let mut mac = [0; 6];
                    mac.copy_from_slice(&self.bufs[i][6..12]);
                    self.neighbours.learn(p.header.src, mac);
                }
            }
            if p.logs[0].is_some() && self.limiter.is_some() {
                if let Some(parsed) = parsed {
                    self.log(&tables, p, i, parsed, now);
                }
            }
            let mut verdict = p.verdict;
            let mut out = p.out;
            if verdict == Verdict::Allow {
                let parsed = parsed.as_ref().expect("an allowed packet parsed");
                let len = self.lens[i];
                match rewrite(&mut self.bufs[i][..len], parsed, p, &tables.ports) {
                    Ok(()) => {
                        let o = out.expect("an allowed packet has an output port");
                        match self.fill_next_hop_mac(&tables, p, o, i) {
                            Ok(()) => {
                                let o_slot = self.slot_of(o);
                                if !send(&mut self.ports[o_slot], &self.bufs[i][..len]) {
                                    self.io.tx_full += 1;
                                }
                            }
                            Err(next_hop) => {
                                self.hold(o, next_hop, i, len, now);
                                self.ask(&tables, o, next_hop, now);
                            }
                        }
                    }
                    Err(_) => {
                        verdict = Verdict::Drop;
                        out = None;
                        self.pipeline.dropped_after_rewrite(DropReason::TtlExceeded);
                        // The ICMP error back to the sender: a rare path, allowed to allocate.
                        if let Some(icmp) = time_exceeded(parsed, &tables.ports) {
                            let slot = self.slot_of(p.port);
                            send(&mut self.ports[slot], &icmp);
                        }
                    }
                }
            }
            if let Some(trace) = &self.trace {
                let rec = TraceRecord {
                    port: p.port,
                    header: p.header,
                    verdict,
                    decision: p.decision,
                    out: if verdict == Verdict::Allow { out } else { None },
                    translated: p.translated,
                    logs: p.logs,
                    tracked: p.decision != Decision::NotIp
                        && !matches!(p.decision, Decision::Malformed(_))
                        && self.pipeline.flows.tracks(&p.header, now),
                    epoch: tables.epoch,
                };
                if trace.try_send(rec).is_err() {
                    self.io.trace_lost += 1;
                }
            }
        }
        self.batch = batch;
        self.parsed = parsed_all;
        finished
    }

    /// The Log rules' lines for packet `p` (frame `i`, as it arrived), within the rate limit. A rare,
    /// rate-limited path, so formatting may allocate.
    fn log(&mut self, t: &TableSet, p: &Packet, i: usize, parsed: &Parsed, now: Nanos) {
        let node = &t.world.node;
        let name = |port: Option<Port>| match port {
            Some(Port::Uplink(u)) => node.uplinks.get(u as usize).map(|u| u.name.as_str()).unwrap_or(""),
            Some(Port::Workload(w)) => {
                node.workloads.get(w as usize).and_then(|w| w.interface.as_deref()).unwrap_or("")
            }
            Some(Port::Host) | None => "",
        };
        let Some(limiter) = self.limiter.as_mut() else { return };
        for hit in p.logs.iter().flatten() {
            if !limiter.admit(now) {
                self.io.log_suppressed += 1;
                continue;
            }
            let prefix = log_for(&t.world, rule_ref(t, hit.ep, hit.stage, hit.dir, hit.rule)).prefix;
            let out = if p.verdict == Verdict::Allow { p.out } else { None };
            eprintln!("{}", log_line(&prefix, name(Some(p.port)), name(out), &self.bufs[i][..self.lens[i]], parsed));
            self.io.log_lines += 1;
        }
    }

    /// Sets the destination MAC where the configuration does not give it: a pod's MAC as learned from its
    /// frames or ARP, an on-link neighbour or the gateway as learned on the uplink. `Err(next hop)` when it
    /// is not known yet (the caller asks for it and drops the frame, as a router without a neighbour entry
    /// would after its short queue).
    fn fill_next_hop_mac(&mut self, t: &TableSet, p: &Packet, out: Port, i: usize) -> Result<(), IpAddr> {
        let ports: &PortMap = &t.ports;
        let dst = p.translated.map(|d| d.ip()).unwrap_or(p.header.dst);
        let next_hop = match out {
            Port::Workload(w) if ports.workload_mac.get(w as usize).copied().flatten().is_none() => dst,
            Port::Uplink(u) if ports.uplink_on_link(u, dst) => dst,
            Port::Uplink(u) if ports.gateway_mac.get(u as usize).copied().flatten().is_none() => {
                match t.world.node.uplinks.get(u as usize).and_then(|up| up.gateway) {
                    Some(gw) => gw,
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        let mac = self.neighbours.get(next_hop).ok_or(next_hop)?;
        self.bufs[i][0..6].copy_from_slice(&mac);
        Ok(())
    }

    /// Keeps frame `i` until its next hop's MAC is known (as Linux queues a few packets per unresolved
    /// neighbour); with every slot taken, the frame is dropped and counted.
    fn hold(&mut self, out: Port, next_hop: IpAddr, i: usize, len: usize, now: Nanos) {
        match self.pending.iter().position(Option::is_none) {
            Some(k) => {
                self.pending_bufs[k][..len].copy_from_slice(&self.bufs[i][..len]);
                self.pending[k] = Some(Pending { out, next_hop, len, since: now });
                self.io.held += 1;
            }
            None => self.io.no_neighbour += 1,
        }
    }

    /// Sends held frames whose next hop has become known, asks again for the others, and drops those held
    /// longer than [`HOLD_FOR`].
    fn release_held(&mut self) {
        let now = self.clock.now();
        let tables = self.pipeline.tables();
        for k in 0..self.pending.len() {
            let Some(p) = self.pending[k] else { continue };
            if let Some(mac) = self.neighbours.get(p.next_hop) {
                self.pending_bufs[k][0..6].copy_from_slice(&mac);
                let slot = self.slot_of(p.out);
                if !send(&mut self.ports[slot], &self.pending_bufs[k][..p.len]) {
                    self.io.tx_full += 1;
                }
                self.pending[k] = None;
            } else if now.saturating_sub(p.since) > HOLD_FOR {
                self.pending[k] = None;
                self.io.no_neighbour += 1;
            } else {
                self.ask(&tables, p.out, p.next_hop, now);
            }
        }
    }

    /// Asks `port` who has `ip` (an IPv4 next hop we have no MAC for), at most once per
    /// [`ARP_ASK_INTERVAL`] per worker so a flood towards a silent address does not become an ARP flood.
    fn ask(&mut self, t: &TableSet, port: Port, ip: IpAddr, now: Nanos) {
        let IpAddr::V4(target) = ip else { return };
        if now.saturating_sub(self.last_ask) < ARP_ASK_INTERVAL && self.last_ask != 0 {
            return;
        }
        let (mac, sender) = match port {
            Port::Uplink(u) => {
                let up = t.world.node.uplinks.get(u as usize);
                let sender = up.and_then(|up| {
                    up.addrs.iter().find_map(|a| match a {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    })
                });
                match (t.ports.uplink_mac.get(u as usize).copied().flatten(), sender) {
                    (Some(m), Some(s)) => (m, s),
                    _ => return,
                }
            }
            Port::Workload(_) => (WORKLOAD_GATEWAY_MAC, std::net::Ipv4Addr::new(169, 254, 1, 1)),
            Port::Host => return,
        };
        self.last_ask = now.max(1);
        let n = arp::request(mac, sender, target, &mut self.scratch);
        let slot = self.slot_of(port);
        if send(&mut self.ports[slot], &self.scratch[..n]) {
            self.io.arp_asked += 1;
        }
    }

    fn learn_uplink_neighbour(&mut self, t: &TableSet, u: u16, i: usize, parsed: &Parsed) {
        let src = parsed.header.src;
        if t.ports.uplink_on_link(u, src) {
            let mut mac = [0; 6];
            mac.copy_from_slice(&self.bufs[i][6..12]);
            self.neighbours.learn(src, mac);
        }
    }

    /// A pod's neighbour solicitation is answered with the veth's MAC, as the host side of a Calico veth
    /// does (Felix accepts NDP from pods before any policy, semantics §I.2a); true if frame `i` was one.
    fn answer_pod_solicitation(&mut self, port: Port, i: usize) -> bool {
        let Some(ns) = ndp::parse_solicitation(&self.bufs[i][..self.lens[i]]) else { return false };
        let n = ndp::advertisement(&ns, WORKLOAD_GATEWAY_MAC, &mut self.scratch);
        let slot = self.slot_of(port);
        if send(&mut self.ports[slot], &self.scratch[..n]) {
            self.io.ndp_answered += 1;
        }
        true
    }

    /// The host's neighbour solicitation for a local pod's address (the host routes pods through the tap)
    /// is answered here, like its ARP; true if frame `i` was one.
    fn answer_host_solicitation(&mut self, i: usize) -> bool {
        let Some(ns) = ndp::parse_solicitation(&self.bufs[i][..self.lens[i]]) else { return false };
        let tables = self.pipeline.tables();
        if !tables.ports.workload_by_ip.contains_key(&IpAddr::V6(ns.target)) {
            return false;
        }
        let n = ndp::advertisement(&ns, mac_for_host(&tables.ports), &mut self.scratch);
        let slot = self.slot_of(Port::Host);
        if send(&mut self.ports[slot], &self.scratch[..n]) {
            self.io.ndp_answered += 1;
        }
        true
    }

    /// ARP: pods get proxy-ARP replies; uplink and tap pass ARP to each other; the host's ARP for a pod is
    /// answered here.
    fn arp(&mut self, port: Port, i: usize) {
        let len = self.lens[i];
        let Some(a) = arp::parse(&self.bufs[i][..len]) else {
            self.io.arp_dropped += 1;
            return;
        };
        let tables = self.pipeline.tables();
        let host_slot = self.slot_of(Port::Host);
        match port {
            Port::Workload(w) => {
                if tables.ports.workload_by_ip.get(&IpAddr::V4(a.sender_ip)) == Some(&w) {
                    self.neighbours.learn(IpAddr::V4(a.sender_ip), a.sender_mac);
                }
                if a.request {
                    let n = arp::reply(&a, WORKLOAD_GATEWAY_MAC, &mut self.scratch);
                    let slot = self.slot_of(port);
                    send(&mut self.ports[slot], &self.scratch[..n]);
                    self.io.arp_replied += 1;
                }
            }
            Port::Uplink(_) => {
                self.neighbours.learn(IpAddr::V4(a.sender_ip), a.sender_mac);
                if send(&mut self.ports[host_slot], &self.bufs[i][..len]) {
                    self.io.arp_passed += 1;
                } else {
                    self.io.arp_dropped += 1;
                }
            }
            Port::Host => {
                let pod = tables.ports.workload_by_ip.contains_key(&IpAddr::V4(a.target_ip));
                if a.request && pod {
                    let n = arp::reply(&a, mac_for_host(&tables.ports), &mut self.scratch);
                    send(&mut self.ports[host_slot], &self.scratch[..n]);
                    self.io.arp_replied += 1;
                    return;
                }
                let target = IpAddr::V4(a.target_ip);
                let u = (0..self.uplinks as u16).find(|&u| tables.ports.uplink_on_link(u, target)).unwrap_or(0);
                let slot = self.slot_of(Port::Uplink(u));
                if self.uplinks > 0 && send(&mut self.ports[slot], &self.bufs[i][..len]) {
                    self.io.arp_passed += 1;
                } else {
                    self.io.arp_dropped += 1;
                }
            }
        }
    }
}

/// The MAC the dataplane answers the host with when it asks for a pod (ARP or NDP): the uplink's, which the
/// tap carries too.
fn mac_for_host(ports: &PortMap) -> [u8; 6] {
    ports.uplink_mac.first().copied().flatten().unwrap_or(WORKLOAD_GATEWAY_MAC)
}

/// Sends one frame out of a port queue; false if it would not take it (the caller counts the loss). A
/// function of the queue alone, so a caller can send from its own buffers while it holds them.
fn send(port: &mut Option<PortIo>, frame: &[u8]) -> bool {
    match port {
        Some(PortIo::Xsk(s)) => s.send_copy(frame),
        Some(PortIo::Tap(t)) => t.write(frame),
        None => false,
    }
}

/// A port as a handoff tag: uplinks as they are, pods with bit 14, the host as bit 15.
fn tag(port: Port) -> u16 {
    match port {
        Port::Uplink(u) => u,
        Port::Workload(w) => 0x4000 | w,
        Port::Host => 0x8000,
    }
}

fn untag(t: u16) -> Port {
    match t {
        0x8000 => Port::Host,
        t if t & 0x4000 != 0 => Port::Workload(t & 0x3fff),
        t => Port::Uplink(t),
    }
}
