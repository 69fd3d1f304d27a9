//! `calxdp-bench e2e [--quick]`: end-to-end forwarding of 64-byte UDP through a node, in packets a second,
//! for three forwarders on the same traffic and the same topology (`topo`), in one run:
//!
//! 1. **ceiling** — a raw AF_XDP reflector without policy (receive on the uplink's socket, rewrite the
//!    MACs, transmit on the pod veth's socket): what AF_XDP copy mode on veth allows at all;
//! 2. **calxdp** — the live node (`calxdp::live::LiveNode`) with ~1000 synthetic Calico policies, about
//!    half of which apply to the pod, the flow admitted by a policy last in the default tier;
//! 3. **kernel** — Linux forwarding under `calxdp render iptables` of the same node and policies
//!    (`kernel`): what the same node costs with Calico's iptables dataplane.
//!
//! Two traffic mixes go through calxdp and the kernel: the **one-way** flow (never answered, so every frame
//! is a NEW one for Linux's conntrack and calxdp's, and walks the policy), and the **established** flow (a
//! flow of its own the sink pod answers during the warm-up, so both conntracks have seen both directions
//! before the window: Linux accepts it at Felix's leading `--ctstate RELATED,ESTABLISHED` rule, calxdp at its
//! flow-table fast path). Forwarded frames are counted where they arrive, on the sink's veth, for every
//! forwarder and mix; the replies are counted where they arrive too, on the generator's veth.
//!
//! The generator (`gen`, BPF_PROG_RUN live frames) is pinned to CPU 0 and every forwarder to CPU 1; the
//! forwarders take turns (one window each per round, three rounds) and each figure is the median of its
//! three windows. It also measures policy-update-to-enforcement latency on calxdp
//! at 1k policies: with a steady stream flowing, the allow policy is replaced by a deny (and back), and
//! the time from the start of the table publication until the sink stops (starts) receiving is taken.
//! Figures are noisy (a shared 2-core machine): they are reported, never asserted.

mod gen;
mod kernel;
mod topo;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use calxdp::live::{LiveNode, LiveOptions};
use calxdp_dataplane::sys::ring::XdpDesc;
use calxdp_dataplane::sys::socket::{XskConfig, XskSocket};
use calxdp_dataplane::xdp::Redirect;
use calxdp_policy::compile::ProgramCache;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::{Direction, ResolvedNode, Stage};
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::yaml::{parse_documents, Field, Origin};

use crate::synth;
use gen::{Generator, Pace, SinkCounter};
use topo::{Counter, Topology};

const GEN_CPU: usize = 0;
const FORWARD_CPU: usize = 1;
const RUNS: usize = 3;

/// Runs the benchmark; on failure prints why and exits non-zero (after the namespaces are gone).
pub fn run(quick: bool) {
    if let Err(e) = bench(quick) {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
}

/// The interface counters the windows read.
struct Counters {
    /// Frames the sink's veth received (every one is counted, then dropped by `cxb_count`).
    sink_rx: Counter,
    /// Frames the node's uplink veth received.
    node_in: Counter,
    /// Frames the generator's veth received: the sink's replies, once forwarded.
    gen_rx: Counter,
    sink_xdp: SinkCounter,
}

/// One measurement window, in frames a second.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Frames the node's uplink veth took in (those its XDP program could not hand to a full AF_XDP
    /// receive ring included).
    offered: f64,
    forwarded: f64,
    /// The same as `forwarded`, counted by the sink's XDP program (a cross-check).
    counted: f64,
}

/// Which of the client's flows a window sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// [`topo::CLIENT_PORT`], never answered.
    OneWay,
    /// [`topo::ESTABLISHED_PORT`], answered by the sink during the warm-up.
    Established,
}

/// Replies the sink sends in an established window's warm-up.
const REPLIES: usize = 5;

/// The medians of a forwarder's windows.
#[derive(Debug, Clone)]
struct Result3 {
    name: &'static str,
    windows: Vec<Window>,
    gen_pps: Vec<f64>,
    note: String,
}

impl Result3 {
    fn push(&mut self, w: Window, gen_pps: f64, note: String) {
        self.windows.push(w);
        self.gen_pps.push(gen_pps);
        self.note = note;
    }

    fn median(&self, f: impl Fn(&Window) -> f64) -> f64 {
        median(self.windows.iter().map(f).collect())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(quick: bool) -> Result<(), String> {
    if !calxdp_dataplane::sys::process::is_root() {
        return Err("needs root: it creates network namespaces, attaches XDP and opens AF_XDP sockets".into());
    }
    let window = Duration::from_secs(if quick { 3 } else { 10 });
    let warm = Duration::from_millis(500);

    let (node, allow, deny) = policy_world();
    let terms = ingress_terms(&node, &allow);
    let policies = allow.iter().count();

    let topo = Topology::create()?;
    let counters = Counters {
        sink_rx: topo::in_netns(topo::SINK_NS, || Counter::open(topo::SINK_IF, "rx_packets"))?,
        node_in: topo::in_netns(topo::NODE_NS, || Counter::open(topo::NODE_UP_IF, "rx_packets"))?,
        gen_rx: topo::in_netns(topo::GEN_NS, || Counter::open(topo::GEN_IF, "rx_packets"))?,
        sink_xdp: topo::in_netns(topo::SINK_NS, || SinkCounter::attach(topo::SINK_IF))?,
    };
    println!(
        "e2e: 64-byte UDP {}:{} -> {}:{} | {} --veth-- {} --veth-- {} | generator: BPF_PROG_RUN live frames, CPU {GEN_CPU}; \
         forwarder CPU {FORWARD_CPU}; {RUNS} windows of {} s each, medians",
        topo::ip_text(topo::CLIENT_IP),
        topo::CLIENT_PORT,
        topo::ip_text(topo::SINK_IP),
        topo::SINK_PORT,
        topo::GEN_NS,
        topo::NODE_NS,
        topo::SINK_NS,
        window.as_secs()
    );
    println!("e2e: sink counts with an XDP program ({} mode) on {}", counters.sink_xdp.mode, topo::SINK_IF);
    println!(
        "e2e: established mix: the flow from port {} is answered by the sink ({REPLIES} replies {}:{} -> {}:{} in \
         the warm-up, counted on {}), then measured like the one-way flow",
        topo::ESTABLISHED_PORT,
        topo::ip_text(topo::SINK_IP),
        topo::SINK_PORT,
        topo::ip_text(topo::CLIENT_IP),
        topo::ESTABLISHED_PORT,
        topo::GEN_IF
    );

    // The forwarders take turns, one window each per round, so drifting load on the machine falls on all.
    let mut results: Vec<Result3> = ["ceiling", "calxdp", "kernel", "calxdp-est", "kernel-est"]
        .into_iter()
        .map(|name| Result3 { name, windows: Vec::new(), gen_pps: Vec::new(), note: String::new() })
        .collect();
    let mut kernel_skipped = None;
    for _ in 0..RUNS {
        // 1. The ceiling: a raw AF_XDP reflector.
        {
            let reflector = Reflector::start()?;
            let measured = drive(&counters, warm, window, Mix::OneWay);
            let (rx, tx, drops) = reflector.stop()?;
            let (w, g, _) = measured?;
            results[0].push(
                w,
                g,
                format!("reflector received {rx}, sent {tx} (copy mode, both veths native XDP); dropped by the kernel before its receive ring: {drops}"),
            );
        }

        // 2. calxdp with the policies, the one-way then the established mix.
        let ((w, g, note), (we, ge, note_e)) = topo::in_netns(topo::NODE_NS, || {
            let live = start_calxdp(&node, &allow)?;
            let modes: Vec<String> = live.attach_modes.iter().map(|(i, m)| format!("{i}:{m}")).collect();
            let one_way = drive(&counters, warm, window, Mix::OneWay);
            let established = one_way.is_ok().then(|| drive(&counters, warm, window, Mix::Established));
            let (c, io) = live.stop();
            let (w, g, _) = one_way?;
            let (we, ge, replies) = established.expect("driven after a one-way success")?;
            let note = format!(
                "XDP {}; last round, both mixes: worker packets {} allowed {} tx_full {} batches {} congested \
                 rounds {}; dropped by the kernel before the receive rings: fill ring empty {} receive ring full {} \
                 in all {}",
                modes.join(" "),
                c.packets,
                c.allowed,
                io.tx_full,
                io.batches,
                io.congested_rounds,
                io.xsk_fill_empty,
                io.xsk_rx_ring_full,
                io.xsk_dropped()
            );
            Ok(((w, g, note), (we, ge, format!("replies forwarded to the client: {replies}/{REPLIES}"))))
        })?;
        results[1].push(w, g, note);
        results[3].push(we, ge, note_e);

        // 3. The kernel under calxdp render iptables of the same node and policies.
        if kernel_skipped.is_none() {
            match kernel::setup(&node, &allow) {
                Ok(setup) => {
                    let note = format!(
                        "{}: calxdp render iptables of the same node and policies: {} rules ({} in the pod's \
                         ingress and policy chains), {} ipsets; ingress veth NAPI by {}; forwarding on CPU \
                         {FORWARD_CPU} by RPS",
                        setup.backend, setup.rules, setup.pod_rules, setup.ipsets, setup.napi
                    );
                    let at = setup.established_at.map_or_else(|| "absent".to_string(), |i| format!("rule {i}"));
                    let one_way = drive(&counters, warm, window, Mix::OneWay);
                    let established = one_way.is_ok().then(|| drive(&counters, warm, window, Mix::Established));
                    kernel::teardown(setup);
                    let (w, g, _) = one_way?;
                    let (we, ge, replies) = established.expect("driven after a one-way success")?;
                    results[2].push(w, g, note);
                    results[4].push(
                        we,
                        ge,
                        format!(
                            "replies forwarded to the client: {replies}/{REPLIES}; the pod chain's --ctstate \
                             RELATED,ESTABLISHED accept: {at}"
                        ),
                    );
                }
                Err(e) => kernel_skipped = Some(e),
            }
        }
    }
    if let Some(e) = &kernel_skipped {
        println!("e2e: kernel measurement skipped: {e}");
        results.retain(|r| !r.name.starts_with("kernel"));
    }

    // Policy-update-to-enforcement latency on calxdp at 1k policies.
    let latency = topo::in_netns(topo::NODE_NS, || {
        let mut live = start_calxdp(&node, &allow)?;
        let lat = enforcement(&mut live, &allow, &deny, &counters.sink_rx);
        live.stop();
        Ok(lat)
    })?;
    drop(counters);
    drop(topo);

    report(&results, policies, terms, Some(latency));
    Ok(())
}

/// Starts the live node from the calling thread (inside the node namespace), its workers on the
/// forwarding CPU.
fn start_calxdp(node: &NodeConfig, resources: &ResourceSet) -> Result<LiveNode, String> {
    topo::pin(Some(FORWARD_CPU)); // the workers inherit it
    let opts = LiveOptions { host_addresses: true, ..Default::default() };
    let live = LiveNode::start(node.clone(), resources.clone(), &opts, None).map_err(|e| e.to_string());
    topo::pin(None);
    live
}

/// Runs the generator flat out and measures one window after a warm-up; also returns the generator's own
/// rate while it ran, and (the established mix) how many of the sink's replies reached the client's veth.
fn drive(c: &Counters, warm: Duration, window: Duration, mix: Mix) -> Result<(Window, f64, u64), String> {
    let port = match mix {
        Mix::OneWay => topo::CLIENT_PORT,
        Mix::Established => topo::ESTABLISHED_PORT,
    };
    let generator = Generator::start(Pace::Flat, GEN_CPU, port)?;
    let mut replies = 0;
    if mix == Mix::Established {
        // The flow is open (the forwarder has seen the client's frames); the sink answers it, and the
        // answers that come out of the forwarder's uplink prove it saw both directions.
        std::thread::sleep(warm / 5);
        let before = c.gen_rx.read();
        topo::in_netns(topo::SINK_NS, || topo::reply(REPLIES, Duration::from_millis(10)))?;
        std::thread::sleep(Duration::from_millis(20));
        replies = c.gen_rx.read().saturating_sub(before);
    }
    std::thread::sleep(warm);
    let read = || (c.node_in.read(), c.sink_rx.read(), c.sink_xdp.count());
    let (n0, r0, x0) = read();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let (n1, r1, x1) = read();
    let secs = t0.elapsed().as_secs_f64();
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let w = Window { offered: rate(n0, n1), forwarded: rate(r0, r1), counted: rate(x0, x1) };
    let gen_pps = generator.stop()?;
    Ok((w, gen_pps, replies))
}

/// The node, the policies that admit the flow, and the same with the admitting policy turned to Deny.
fn policy_world() -> (NodeConfig, ResourceSet, ResourceSet) {
    let mut y = String::new();
    let _ = writeln!(y, "name: cxb-node\ninterfaces:");
    let _ = writeln!(
        y,
        "  - {{name: {}, ips: [{}/24], gateway: {}, mac: \"{}\", gatewayMac: \"{}\"}}",
        topo::NODE_UP_IF,
        topo::ip_text(topo::NODE_UP_IP),
        topo::ip_text(topo::GATEWAY_IP),
        topo::mac_text(topo::NODE_UP_MAC),
        topo::mac_text(topo::GEN_MAC)
    );
    y.push_str("namespaces:\n  - {name: bench, labels: {team: bench}}\n");
    for n in 0..synth::NAMESPACES {
        let _ = writeln!(y, "  - {{name: ns{n}, labels: {{team: t{}}}}}", n % 5);
    }
    let _ = writeln!(
        y,
        "workloads:\n  - {{name: sink, namespace: bench, interface: {}, ips: [{}], mac: \"{}\", labels: {{app: sink, tier: web}}, ports: [{{name: http, port: 8080}}]}}",
        topo::NODE_POD_IF,
        topo::ip_text(topo::SINK_IP),
        topo::mac_text(topo::SINK_MAC)
    );
    y.push_str("remoteEndpoints:\n");
    for i in 0..synth::REMOTE_PODS {
        let _ = writeln!(
            y,
            "  - {{name: pod{i}, namespace: ns{}, ips: [{}], labels: {{app: app{}, tier: {}}}}}",
            i % synth::NAMESPACES,
            synth::pod_ip(i),
            i % synth::APPS,
            ["web", "api", "db"][i % 3]
        );
    }
    y.push_str("config:\n  defaultEndpointToHostAction: Accept\n");
    let origin = Origin::file("e2e-node");
    let docs = parse_documents(&y, &origin).expect("the e2e node parses");
    let node = NodeConfig::parse(Field::root(&docs[0], &origin)).expect("the e2e node is valid");

    // 1000 policies of 3 rules whose peers the client never is; half select every pod (the sink among
    // them), half one remote app each.
    let selector = |p: usize| if p % 2 == 0 { "all()".to_string() } else { format!("app == 'app{}'", p % synth::APPS) };
    let base = synth::policies(3, 1000, 3, selector);
    let admit = |action: &str| {
        format!(
            "{base}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: allow-client, namespace: bench}}\nspec:\n  order: 5000\n  selector: \"app == 'sink'\"\n  types: [Ingress]\n  ingress: [{{action: {action}, protocol: UDP, source: {{nets: [\"{}.{}.0.0/16\"]}}, destination: {{ports: [{}]}}}}]\n",
            topo::CLIENT_IP[0],
            topo::CLIENT_IP[1],
            topo::SINK_PORT
        )
    };
    (node, synth::load(&admit("Allow")), synth::load(&admit("Deny")))
}

/// How many terms calxdp's compiled ingress walk for the pod has (the kernel ruleset is sized to match).
fn ingress_terms(node: &NodeConfig, resources: &ResourceSet) -> usize {
    let world = ResolvedNode::new(node, resources);
    let tables = ProgramCache::new().compile(&world, 1);
    tables.workloads[0].get(Stage::Normal, Direction::Ingress).map(|p| p.flat.terms.len()).unwrap_or(0)
}

/// The ceiling's forwarder: AF_XDP sockets on both node veths, frames from the uplink reflected to the pod.
struct Reflector {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(u64, u64, String), String>>>,
}

impl Reflector {
    fn start() -> Result<Reflector, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("cxb-reflector".into())
            .spawn(move || -> Result<(u64, u64, String), String> {
                let setup = (|| -> Result<_, String> {
                    topo::enter(topo::NODE_NS)?;
                    topo::pin(Some(FORWARD_CPU));
                    let mut up = Redirect::attach(topo::NODE_UP_IF).map_err(|e| e.to_string())?;
                    let mut pod = Redirect::attach(topo::NODE_POD_IF).map_err(|e| e.to_string())?;
                    let rx = XskSocket::open(topo::NODE_UP_IF, 0, XskConfig::default()).map_err(|e| e.to_string())?;
                    let tx = XskSocket::open(topo::NODE_POD_IF, 0, XskConfig::default()).map_err(|e| e.to_string())?;
                    up.register(0, rx.fd()).map_err(|e| e.to_string())?;
                    pod.register(0, tx.fd()).map_err(|e| e.to_string())?;
                    Ok((up, pod, rx, tx))
                })();
                let (_up, _pod, mut rx, mut tx) = match setup {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut descs = [XdpDesc::default(); 64];
                let mut addrs = [0u64; 64];
                let (mut received, mut sent) = (0u64, 0u64);
                while !stop2.load(Ordering::Relaxed) {
                    let n = rx.receive(&mut descs);
                    for (i, d) in descs[..n].iter().enumerate() {
                        let f = rx.frame_mut(d.addr, d.len);
                        f[0..6].copy_from_slice(&topo::SINK_MAC);
                        f[6..12].copy_from_slice(&topo::NODE_POD_MAC);
                        if tx.send_copy(f) {
                            sent += 1;
                        }
                        addrs[i] = d.addr;
                    }
                    received += n as u64;
                    rx.recycle(&addrs[..n]);
                    tx.flush();
                    if tx.in_flight > 0 {
                        // The kernel sends at most 32 frames per wakeup in copy mode: wake it again so the
                        // TX ring drains (a no-op syscall when it already has).
                        tx.wake_tx();
                    }
                }
                let drops = match rx.statistics() {
                    Ok(st) => format!(
                        "fill ring empty {} receive ring full {} in all {}",
                        st.rx_fill_ring_empty_descs, st.rx_ring_full, st.rx_dropped
                    ),
                    Err(e) => format!("unknown ({e})"),
                };
                Ok((received, sent, drops))
            })
            .map_err(|e| format!("cannot start the reflector thread: {e}"))?;
        let reflector = Reflector { stop, thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(reflector),
            Ok(Err(e)) => Err(format!("ceiling reflector: {e}")),
            Err(_) => Err("the reflector thread died".into()),
        }
    }

    /// Frames received and sent, and the receive socket's kernel drop counters.
    fn stop(mut self) -> Result<(u64, u64, String), String> {
        self.finish().unwrap_or(Ok((0, 0, String::new())))
    }

    fn finish(&mut self) -> Option<Result<(u64, u64, String), String>> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take()?;
        Some(t.join().unwrap_or_else(|_| Err("the reflector thread panicked".into())))
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Policy-update-to-enforcement latencies, in milliseconds, one entry per repetition.
#[derive(Debug, Default)]
struct Enforcement {
    /// Allow → Deny: from the start of the publication to the last frame the sink saw.
    to_deny: Vec<f64>,
    /// Deny → Allow: from the start of the publication to the first frame the sink saw again.
    to_allow: Vec<f64>,
    compile_deny: Vec<f64>,
    compile_allow: Vec<f64>,
    stream_pps: f64,
    problems: Vec<String>,
}

/// With a steady stream flowing through `live`, flips the admitting policy to Deny and back, three times,
/// while a poller timestamps every change of the sink's receive counter.
fn enforcement(live: &mut LiveNode, allow: &ResourceSet, deny: &ResourceSet, sink: &Counter) -> Enforcement {
    const RATE: u64 = 200_000;
    const HOLD: Duration = Duration::from_millis(400);
    let mut out = Enforcement::default();
    // The control thread (this one, which compiles) and the poller float: pinning them beside the
    // generator stalls the stream while the tables compile, which would read as early enforcement.
    let generator = match Generator::start(Pace::Rate(RATE), GEN_CPU, topo::CLIENT_PORT) {
        Ok(g) => g,
        Err(e) => {
            out.problems.push(e);
            return out;
        }
    };
    let done = AtomicBool::new(false);
    let mut marks: Vec<(Instant, bool)> = Vec::new();
    let log = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            // Best effort: a coarser slack only blurs the marks' timing.
            let _ = calxdp_dataplane::sys::process::set_timer_slack(1);
            let mut log: Vec<(Instant, u64)> = Vec::with_capacity(1 << 16);
            let mut last = sink.read();
            log.push((Instant::now(), last));
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(100));
                let now = sink.read();
                if now != last {
                    log.push((Instant::now(), now));
                    last = now;
                }
            }
            log
        });
        std::thread::sleep(HOLD);
        for _ in 0..RUNS {
            for (set, to_deny) in [(deny, true), (allow, false)] {
                let t0 = Instant::now();
                match live.publisher.replace(set.clone()) {
                    Ok(p) => {
                        let ms = p.took.as_secs_f64() * 1e3;
                        if to_deny {
                            out.compile_deny.push(ms)
                        } else {
                            out.compile_allow.push(ms)
                        }
                    }
                    Err(e) => out.problems.push(format!("publication rejected: {e}")),
                }
                marks.push((t0, to_deny));
                std::thread::sleep(HOLD);
            }
        }
        done.store(true, Ordering::Relaxed);
        poller.join().unwrap_or_default()
    });
    let _ = generator.stop();
    // The stream's rate while allowed: the hold before the first publication.
    if let (Some(first), Some(&(t0, _))) = (log.first(), marks.first()) {
        let before = log.iter().take_while(|e| e.0 < t0).last().unwrap_or(first);
        let secs = before.0.duration_since(first.0).as_secs_f64();
        if secs > 0.0 {
            out.stream_pps = (before.1 - first.1) as f64 / secs;
        }
    }
    // Changes of the counter (each entry of the log after the first is one) between two publications.
    for (k, &(t0, to_deny)) in marks.iter().enumerate() {
        let end = marks.get(k + 1).map(|m| m.0).unwrap_or_else(|| t0 + HOLD);
        let changes: Vec<Instant> = log.iter().skip(1).map(|e| e.0).filter(|&t| t >= t0 && t < end).collect();
        if to_deny {
            match changes.last() {
                Some(&t) if end.duration_since(t) > HOLD / 2 => {
                    out.to_deny.push(t.duration_since(t0).as_secs_f64() * 1e3)
                }
                Some(_) => out.problems.push("frames still reached the sink late after the deny was published".into()),
                None => out.to_deny.push(0.0),
            }
        } else {
            match changes.first() {
                Some(&t) => out.to_allow.push(t.duration_since(t0).as_secs_f64() * 1e3),
                None => out.problems.push("no frame reached the sink after the allow was published".into()),
            }
        }
    }
    out
}

fn report(results: &[Result3], policies: usize, terms: usize, latency: Option<Enforcement>) {
    println!("e2e: calxdp policies: {policies} resources; the pod's compiled ingress walk: {terms} terms");
    println!(
        "{:<10} {:>10} {:>12} {:>14} {:>13} {:>20}",
        "forwarder", "gen_pps", "node_in_pps", "forwarded_pps", "sink_xdp_pps", "forwarded min..max"
    );
    for r in results {
        let fw: Vec<f64> = r.windows.iter().map(|w| w.forwarded).collect();
        let lo = fw.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = fw.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<10} {:>10.0} {:>12.0} {:>14.0} {:>13.0} {:>20}",
            r.name,
            median(r.gen_pps.clone()),
            r.median(|w| w.offered),
            r.median(|w| w.forwarded),
            r.median(|w| w.counted),
            format!("{lo:.0}..{hi:.0}")
        );
        println!("           {}", r.note);
    }
    let get = |n: &str| results.iter().find(|r| r.name == n).map(|r| r.median(|w| w.forwarded));
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    };
    let (ceiling, calxdp, kernel) = (get("ceiling"), get("calxdp"), get("kernel"));
    let (calxdp_est, kernel_est) = (get("calxdp-est"), get("kernel-est"));
    println!(
        "ceiling_pps={} calxdp_pps={} kernel_pps={} calxdp_vs_ceiling={} calxdp_vs_kernel={} \
         calxdp_established_pps={} kernel_established_pps={} calxdp_vs_kernel_established={}",
        fmt(ceiling),
        fmt(calxdp),
        fmt(kernel),
        ratio(calxdp, ceiling),
        ratio(calxdp, kernel),
        fmt(calxdp_est),
        fmt(kernel_est),
        ratio(calxdp_est, kernel_est)
    );
    let offered = median(results.iter().flat_map(|r| r.windows.iter().map(|w| w.offered)).collect());
    let gen = median(results.iter().flat_map(|r| r.gen_pps.iter().copied()).collect());
    println!(
        "generator_offered_pps={offered:.0} (median over every window of the frames the node's veth took in) \
         generator_tx_pps={gen:.0} (median of the generator's own rate while running)"
    );
    match latency {
        Some(l) => {
            println!(
                "update_to_enforcement_ms={:.2} (compile+publish ms={:.2}) deny_to_allow_ms={:.2} (compile+publish ms={:.2}) \
                 [median of {}; stream {:.0} pps; sink polled every ~100 us; compile+publish is the publisher's own time, which ends after the old tables are freed, so it can exceed the enforcement]",
                median(l.to_deny.clone()),
                median(l.compile_deny.clone()),
                median(l.to_allow.clone()),
                median(l.compile_allow.clone()),
                l.to_deny.len().min(l.to_allow.len()),
                l.stream_pps
            );
            for p in &l.problems {
                println!("e2e: latency: {p}");
            }
        }
        None => println!("update_to_enforcement_ms=n/a (calxdp did not run)"),
    }
}
