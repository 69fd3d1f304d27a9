//! The live node: the node's interfaces taken over through XDP and AF_XDP, the host tap, and the workers
//! (DESIGN.md "The node"). Everything it sets up is undone when it stops, or by the kernel if the process
//! dies: the XDP programs hang on bpf_links and the tap on its file descriptors.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;

use calxdp_dataplane::arp::Neighbours;
use calxdp_dataplane::log::LogLimiter;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{Counters, Pipeline};
use calxdp_dataplane::worker::{Clock, IoCounters, PortIo, TraceRecord, Worker, WorkerShared};
use calxdp_dataplane::xdp::Redirect;
use calxdp_dataplane::xsk::handoff::{self, HandoffReceiver, HandoffSender};
use calxdp_dataplane::xsk::netns;
use calxdp_dataplane::xsk::socket::{XskConfig, XskSocket};
use calxdp_dataplane::xsk::tap::Tap;
use calxdp_policy::node::{parse_mac, NodeConfig};
use calxdp_policy::resource::ResourceSet;

use crate::publisher::TablePublisher;

/// Frames in flight from one worker to another.
const HANDOFF_SLOTS: u32 = 1024;

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
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct LiveNode {
    pub publisher: TablePublisher,
    pub clock: Arc<Clock>,
    pub node: NodeConfig,
    shared: Vec<Arc<WorkerShared>>,
    threads: Vec<JoinHandle<()>>,
    /// Held so the programs stay attached; dropped (detached) after the workers stop.
    redirects: Vec<Redirect>,
    pub attach_modes: Vec<(String, &'static str)>,
}

impl LiveNode {
    /// Checks the machine, takes over the interfaces and starts the workers. Errors are sentences for an
    /// operator: what is missing and what to do.
    pub fn start(
        mut node: NodeConfig,
        resources: ResourceSet,
        opts: &LiveOptions,
        trace: Option<SyncSender<TraceRecord>>,
    ) -> Result<LiveNode, String> {
        preflight(&node, opts)?;
        let felix = &node.felix;
        let limiter = LogLimiter::new(felix.log_rate_limit.as_deref(), felix.log_rate_burst)
            .map_err(|e| format!("node file: config.logActionRateLimit: {e}"))?;
        for u in &mut node.uplinks {
            if u.mac.is_none() {
                u.mac = interface_mac(&u.name);
            }
        }
        let publisher = TablePublisher::new(node.clone(), resources);
        let clock = Arc::new(Clock::default());
        let (uplinks, workloads) = (node.uplinks.len(), node.workloads.len());

        // The host tap: one queue per worker.
        let mut taps = Vec::new();
        for _ in 0..opts.workers {
            let tap = Tap::open(&opts.tap, opts.workers > 1).map_err(|e| {
                format!("cannot create the host tap {}: {e} (calxdp needs /dev/net/tun and CAP_NET_ADMIN)", opts.tap)
            })?;
            taps.push(tap);
        }
        configure_tap(&node, opts)?;

        // Every uplink and pod veth: the XDP program, then one socket per worker queue.
        let mut redirects = Vec::new();
        let mut attach_modes = Vec::new();
        let mut sockets: Vec<Vec<Option<PortIo>>> =
            (0..opts.workers).map(|_| (0..uplinks + workloads + 1).map(|_| None).collect()).collect();
        for (port, name) in &interfaces(&node) {
            let mut redirect = Redirect::attach(name)?;
            attach_modes.push((name.clone(), redirect.mode));
            let slot = Counters::port_slot(*port, uplinks, workloads);
            for (q, worker_ports) in sockets.iter_mut().enumerate() {
                let sock = XskSocket::open(name, q as u32, opts.xsk).map_err(|e| e.to_string())?;
                redirect.register(q as u32, sock.fd())?;
                worker_ports[slot] = Some(PortIo::Xsk(Box::new(sock)));
            }
            redirects.push(redirect);
        }
        for (worker_ports, tap) in sockets.iter_mut().zip(taps) {
            worker_ports[uplinks + workloads] = Some(PortIo::Tap(tap));
        }

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
        let mut shared = Vec::new();
        let mut threads = Vec::new();
        for (i, ((ports, out), inn)) in sockets.into_iter().zip(outs).zip(ins).enumerate() {
            let s = Arc::new(WorkerShared::default());
            let pipeline = Pipeline::new(publisher.slot(), flow_capacity(&node, opts));
            let mut worker = Worker::new(
                pipeline,
                ports,
                uplinks,
                workloads,
                s.clone(),
                clock.clone(),
                trace.clone(),
                opts.log_rules.then(|| limiter.clone()),
            );
            worker.join(i, n, out, inn, neighbours.clone());
            let handle = std::thread::Builder::new()
                .name(format!("calxdp-worker-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| format!("cannot start worker thread {i}: {e}"))?;
            shared.push(s);
            threads.push(handle);
        }
        Ok(LiveNode { publisher, clock, node, shared, threads, redirects, attach_modes })
    }

    /// Every worker's counters, summed.
    pub fn counters(&self) -> (Counters, IoCounters) {
        let mut c = Counters::default();
        let mut io = IoCounters::default();
        for s in &self.shared {
            let g = s.snapshot.lock().expect("a worker never panics holding it");
            c.add(&g.0);
            io.add(&g.1);
        }
        (c, io)
    }

    /// Raises every worker's stop flag and waits for them (their last counters are published on the way out).
    fn halt(&mut self) {
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
    pub fn stop(mut self) -> (Counters, IoCounters) {
        self.halt();
        let counters = self.counters();
        self.redirects.clear();
        counters
    }
}

impl Drop for LiveNode {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Conntrack entries each worker holds: flows are owned by one worker each, so the node's capacity is
/// shared evenly.
pub fn flow_capacity(node: &NodeConfig, opts: &LiveOptions) -> usize {
    opts.flow_capacity.unwrap_or_else(|| node.felix.conntrack_capacity.div_ceil(opts.workers.max(1)))
}

/// Every interface the node takes over, with its port: the uplinks, then each local pod's veth.
pub fn interfaces(node: &NodeConfig) -> Vec<(Port, String)> {
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
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.0.push(name.to_string());
        netns::run_in(name, || {
            for f in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1");
            }
        })
        .map_err(|e| format!("entering namespace {name}: {e}"))?;
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
fn preflight(node: &NodeConfig, opts: &LiveOptions) -> Result<(), String> {
    if opts.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if !is_root() {
        return Err("the node dataplane needs root (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF): it attaches XDP \
                    programs, opens AF_XDP sockets and creates a tap"
            .into());
    }
    let names = interfaces(node);
    for (port, name) in &names {
        let what = match *port {
            Port::Workload(w) => {
                format!("the veth of pod {}/{}", node.workloads[w as usize].namespace, node.workloads[w as usize].name)
            }
            _ => "uplink".to_string(),
        };
        let Some(link) = link_info(name) else {
            return Err(format!(
                "interface {name} ({what}) does not exist in this network namespace; create it or fix the node file"
            ));
        };
        if link.rx_queues < opts.workers {
            return Err(format!(
                "interface {name} has {} receive queue(s) but {} workers were asked for; each worker owns one \
                 queue of every interface",
                link.rx_queues, opts.workers
            ));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(
            "/dev/net/tun is missing: load the tun module (modprobe tun) so calxdp can make the host tap".into()
        );
    }
    let need = opts.xsk.umem_bytes() * names.len() * opts.workers;
    if !has_cap_ipc_lock() {
        let limit = memlock_limit();
        if limit.is_some_and(|l| (l as usize) < need) {
            return Err(format!(
                "memlock limit too low: the AF_XDP UMEMs need {} KiB of locked memory but `ulimit -l` allows {} KiB; \
                 run as root (CAP_IPC_LOCK) or raise the limit",
                need / 1024,
                limit.unwrap_or(0) / 1024
            ));
        }
    }
    Ok(())
}

fn status_field(name: &str) -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    status_field("Uid:").and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0")).unwrap_or(false)
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    status_field("CapEff:").and_then(|v| u64::from_str_radix(&v, 16).ok()).is_some_and(|c| c & (1 << CAP_IPC_LOCK) != 0)
}

/// `ulimit -l` in bytes (None: unlimited or unknown).
fn memlock_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max locked memory"))?;
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok())
}

/// What the node needs to know of an interface, read with `ip` (which, unlike /sys, follows the network
/// namespace of the calling thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub rx_queues: usize,
}

pub fn link_info(name: &str) -> Option<LinkInfo> {
    let out = Command::new("ip").args(["-o", "-d", "link", "show", "dev", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
    Some(LinkInfo {
        mtu: after("mtu").and_then(|m| m.parse().ok()).unwrap_or(1500),
        mac: after("link/ether").and_then(parse_mac),
        rx_queues: after("numrxqueues").and_then(|q| q.parse().ok()).unwrap_or(1),
    })
}

fn interface_mac(name: &str) -> Option<[u8; 6]> {
    link_info(name)?.mac
}

/// Runs `ip` with the arguments; the error names the command.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The tap carries the uplink's MAC and MTU; on a real node also the node's addresses, its default route
/// and a /32 route to each local pod (so the host reaches pods through the dataplane, under policy).
fn configure_tap(node: &NodeConfig, opts: &LiveOptions) -> Result<(), String> {
    let tap = opts.tap.as_str();
    // A node without uplinks (pods only) still has a host stack; its tap gets a fixed local MAC.
    let mac = node.uplinks.first().and_then(|u| u.mac).unwrap_or([0x02, 0xca, 0x1c, 0, 0, 1]);
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ip(&["link", "set", "dev", tap, "address", &mac])?;
    if let Some(link) = node.uplinks.first().and_then(|u| link_info(&u.name)) {
        ip(&["link", "set", "dev", tap, "mtu", &link.mtu.to_string()])?;
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
    ip(&["link", "set", "dev", tap, "up"])?;
    if !opts.host_addresses {
        return Ok(());
    }
    for u in &node.uplinks {
        for (net, addr) in u.ips.iter().zip(&u.addrs) {
            let cidr = format!("{addr}/{}", net.prefix_len());
            ip(&["addr", "replace", &cidr, "dev", tap])?;
        }
    }
    if let Some(gw) = node.uplinks.first().and_then(|u| u.gateway) {
        let family = if gw.is_ipv4() { "-4" } else { "-6" };
        ip(&[family, "route", "replace", "default", "via", &gw.to_string(), "dev", tap])?;
    }
    for w in &node.workloads {
        if w.interface.is_none() {
            continue;
        }
        for a in &w.ips {
            let cidr = match a {
                IpAddr::V4(_) => format!("{a}/32"),
                IpAddr::V6(_) => format!("{a}/128"),
            };
            ip(&["route", "replace", &cidr, "dev", tap])?;
        }
    }
    Ok(())
}
