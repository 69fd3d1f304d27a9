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
use crate::path::{Port, PortMap, WORKLOAD_GATEWAY_MAC};
use crate::pipeline::{rule_ref, Counters, Decision, DropReason, LogHit, Packet, Pipeline, MAX_LOGS};
use crate::tables::TableSet;
use crate::wire::Parsed;
use crate::xsk::ring::XdpDesc;
use crate::xsk::socket::XskSocket;
use crate::xsk::tap::Tap;

/// Frames per batch.
pub const BATCH: usize = 64;
/// Largest frame the worker handles (a standard MTU plus Ethernet and VLAN headers).
pub const FRAME_MAX: usize = 2048;

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
    pub arp_passed: u64,
    /// ARP frames with nowhere to go (no tap, or from a port that does not pass ARP).
    pub arp_dropped: u64,
    /// Allowed frames lost because the output queue was full.
    pub tx_full: u64,
    /// Frames longer than the worker's buffers, dropped on receipt.
    pub oversize: u64,
    pub batches: u64,
    pub trace_lost: u64,
    /// Log-rule lines written, and those the Felix rate limit suppressed.
    pub log_lines: u64,
    pub log_suppressed: u64,
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
    batch: Vec<Packet>,
    parsed: Vec<Option<Parsed>>,
    descs: [XdpDesc; BATCH],
    addrs: [u64; BATCH],
    scratch: [u8; FRAME_MAX],
    neighbours: Neighbours,
    /// Each pod's MAC as seen in its frames, for pods whose MAC the node file does not give.
    pod_mac: Vec<Option<[u8; 6]>>,
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
            batch: Vec::with_capacity(BATCH),
            parsed: Vec::with_capacity(BATCH),
            descs: [XdpDesc::default(); BATCH],
            addrs: [0; BATCH],
            scratch: [0; FRAME_MAX],
            neighbours: Neighbours::with_capacity(1024),
            pod_mac: vec![None; workloads],
            io: IoCounters::default(),
            limiter,
            shared,
            clock,
            trace,
        }
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
        let mut last_publish = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let mut moved = 0;
            for slot in 0..self.ports.len() {
                moved += self.poll(slot);
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

    /// Publishes every port's pending transmits.
    pub fn flush(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            if let PortIo::Xsk(s) = p {
                s.flush();
            }
        }
    }

    /// Receives one batch on a port and handles it; returns how many frames it took.
    pub fn poll(&mut self, slot: usize) -> usize {
        let n = match &mut self.ports[slot] {
            None => return 0,
            Some(PortIo::Xsk(sock)) => {
                let n = sock.receive(&mut self.descs);
                for i in 0..n {
                    let d = self.descs[i];
                    let len = (d.len as usize).min(FRAME_MAX);
                    if (d.len as usize) > FRAME_MAX {
                        self.io.oversize += 1;
                    }
                    self.bufs[i][..len].copy_from_slice(sock.frame_mut(d.addr, len as u32));
                    self.lens[i] = len;
                    self.addrs[i] = d.addr;
                }
                sock.recycle(&self.addrs[..n]);
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
        if n > 0 {
            self.io.batches += 1;
            self.handle(slot, n);
            self.shared.frames_done.fetch_add(n as u64, Ordering::Release);
        }
        n
    }

    /// Decides and forwards the `n` frames in the buffers, all from port slot `slot`.
    fn handle(&mut self, slot: usize, n: usize) {
        let port = self.port_of_slot(slot);
        self.batch.clear();
        self.parsed.clear();
        let mut keep = [false; BATCH];
        for (i, k) in keep.iter_mut().enumerate().take(n) {
            let frame = &self.bufs[i][..self.lens[i]];
            if arp::ethertype(frame) == Some(arp::ETHERTYPE_ARP) {
                continue;
            }
            *k = true;
            if let Port::Workload(w) = port {
                if let Some(src) = frame.get(6..12) {
                    let mut mac = [0; 6];
                    mac.copy_from_slice(src);
                    if let Some(m) = self.pod_mac.get_mut(w as usize) {
                        *m = Some(mac);
                    }
                }
            }
            let (packet, parsed) = ingest(port, frame);
            self.batch.push(packet);
            self.parsed.push(parsed);
        }
        // ARP first, in arrival order (it never enters the pipeline).
        for (i, _) in keep.iter().enumerate().take(n).filter(|(_, k)| !**k) {
            self.arp(port, i);
        }
        if self.batch.is_empty() {
            return;
        }
        let now = self.clock.now();
        let tables = self.pipeline.process(&mut self.batch, now);
        for (b, (i, _)) in keep.iter().enumerate().take(n).filter(|(_, k)| **k).enumerate() {
            let p = self.batch[b];
            let parsed = self.parsed[b];
            if let (Port::Uplink(u), Some(parsed)) = (port, &parsed) {
                self.learn_uplink_neighbour(&tables, u, i, parsed);
            }
            if p.logs[0].is_some() && self.limiter.is_some() {
                if let Some(parsed) = &parsed {
                    self.log(&tables, &p, i, parsed, now);
                }
            }
            let mut verdict = p.verdict;
            let mut out = p.out;
            if verdict == Verdict::Allow {
                let parsed = parsed.expect("an allowed packet parsed");
                let len = self.lens[i];
                match rewrite(&mut self.bufs[i][..len], &parsed, &p, &tables.ports) {
                    Ok(()) => {
                        let o = out.expect("an allowed packet has an output port");
                        self.fill_next_hop_mac(&tables, &p, o, i);
                        let o_slot = self.slot_of(o);
                        if !self.transmit(o_slot, i, len) {
                            self.io.tx_full += 1;
                        }
                    }
                    Err(_) => {
                        verdict = Verdict::Drop;
                        out = None;
                        self.pipeline.dropped_after_rewrite(DropReason::TtlExceeded);
                        // The ICMP error back to the sender: a rare path, allowed to allocate.
                        if let Some(icmp) = time_exceeded(&parsed, &tables.ports) {
                            self.send_bytes(slot, &icmp);
                        }
                    }
                }
            }
            if let Some(trace) = &self.trace {
                let rec = TraceRecord {
                    port,
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

    /// Sends buffer `i` (first `len` bytes) out of port slot `slot`.
    fn transmit(&mut self, slot: usize, i: usize, len: usize) -> bool {
        match &mut self.ports[slot] {
            Some(PortIo::Xsk(s)) => s.send_copy(&self.bufs[i][..len]),
            Some(PortIo::Tap(t)) => t.write(&self.bufs[i][..len]),
            None => false,
        }
    }

    fn send_bytes(&mut self, slot: usize, frame: &[u8]) -> bool {
        match &mut self.ports[slot] {
            Some(PortIo::Xsk(s)) => s.send_copy(frame),
            Some(PortIo::Tap(t)) => t.write(frame),
            None => false,
        }
    }

    /// Sets the destination MAC where the configuration does not give it: a pod's MAC as learned from its
    /// frames, an on-link neighbour or the gateway as learned from ARP on the uplink.
    fn fill_next_hop_mac(&mut self, t: &TableSet, p: &Packet, out: Port, i: usize) {
        let ports: &PortMap = &t.ports;
        let mac = match out {
            Port::Workload(w) => match ports.workload_mac.get(w as usize).copied().flatten() {
                Some(_) => None,
                None => self.pod_mac.get(w as usize).copied().flatten(),
            },
            Port::Uplink(u) => {
                let dst = p.translated.map(|d| d.ip()).unwrap_or(p.header.dst);
                let on_link = ports.uplink_on_link(u, dst);
                if on_link {
                    self.neighbours.get(dst)
                } else if ports.gateway_mac.get(u as usize).copied().flatten().is_none() {
                    t.world.node.uplinks.get(u as usize).and_then(|up| up.gateway).and_then(|g| self.neighbours.get(g))
                } else {
                    None
                }
            }
            Port::Host => None,
        };
        if let Some(m) = mac {
            self.bufs[i][0..6].copy_from_slice(&m);
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
                if let Some(m) = self.pod_mac.get_mut(w as usize) {
                    *m = Some(a.sender_mac);
                }
                if a.request {
                    let n = arp::reply(&a, WORKLOAD_GATEWAY_MAC, &mut self.scratch);
                    let slot = self.slot_of(port);
                    let frame = self.scratch;
                    self.send_bytes(slot, &frame[..n]);
                    self.io.arp_replied += 1;
                }
            }
            Port::Uplink(_) => {
                self.neighbours.learn(IpAddr::V4(a.sender_ip), a.sender_mac);
                if self.transmit(host_slot, i, len) {
                    self.io.arp_passed += 1;
                } else {
                    self.io.arp_dropped += 1;
                }
            }
            Port::Host => {
                let pod = tables.ports.workload_by_ip.contains_key(&IpAddr::V4(a.target_ip));
                if a.request && pod {
                    let mac = tables.ports.uplink_mac.first().copied().flatten().unwrap_or(WORKLOAD_GATEWAY_MAC);
                    let n = arp::reply(&a, mac, &mut self.scratch);
                    let frame = self.scratch;
                    self.send_bytes(host_slot, &frame[..n]);
                    self.io.arp_replied += 1;
                    return;
                }
                let target = IpAddr::V4(a.target_ip);
                let u = (0..self.uplinks as u16).find(|&u| tables.ports.uplink_on_link(u, target)).unwrap_or(0);
                if self.uplinks > 0 && self.transmit(self.slot_of(Port::Uplink(u)), i, len) {
                    self.io.arp_passed += 1;
                } else {
                    self.io.arp_dropped += 1;
                }
            }
        }
    }
}
